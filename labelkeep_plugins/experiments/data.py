"""Data sets that need no download: MNIST-1D (generated locally) and scikit-learn's digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labelkeep_plugins.errors import ConfigError

DATASETS = ("mnist1d", "digits")
MNIST1D_SAMPLES = 5000  # mnist1d's own default


@dataclass(frozen=True)
class Split:
    """Train and test tensors of one data set; inputs are float32, labels int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def classes(self) -> int:
        return int(self.y_train.max()) + 1

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, y, x_test, y_test


def load_dataset(name: str, *, samples: int | None = None) -> Split:
    """Load a data set by name; an unknown name lists the valid ones."""
    return _split(name, *dataset_arrays(name, samples=samples))


def dataset_arrays(name: str, *, samples: int | None = None) -> Arrays:
    """The raw train and test arrays, split the one way every labelkeep tool splits them."""
    if name == "mnist1d":
        return _mnist1d(samples or MNIST1D_SAMPLES)
    if name == "digits":
        return _digits()
    raise ConfigError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")


def _mnist1d(samples: int) -> Arrays:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ConfigError(
            "the mnist1d dataset needs the 'mnist1d' package: pip install 'labelkeep[demo]'"
        ) from exc
    args = get_dataset_args()
    args.num_samples = samples
    data = make_dataset(args)  # generated locally from templates, fixed seed; no download
    return data["x"], data["y"], data["x_test"], data["y_test"]


def _digits() -> Arrays:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ConfigError(
            "the digits dataset needs scikit-learn: pip install 'labelkeep[demo]'"
        ) from exc
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order] / 16.0, y[order]
    cut = int(0.7 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _split(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Split:
    def features(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32))

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.int64))

    return Split(name, features(x_train), labels(y_train), features(x_test), labels(y_test))
