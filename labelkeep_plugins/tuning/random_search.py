"""A tiny random search over an NNI search space, for when NNI is not installed.

It samples the same space types that :mod:`labelkeep_plugins.tuning.space` accepts, from
one seeded generator, so a resumed search proposes the same parameter sets again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


class RandomSearch:
    """Independent uniform draws; results are not used (nothing to learn from)."""

    label = "random (built-in random search)"

    def __init__(self, space: Mapping[str, Mapping[str, Any]], seed: int) -> None:
        self._space = {name: dict(spec) for name, spec in space.items()}
        self._rng = np.random.default_rng(seed)

    def propose(self, trial: int) -> dict[str, Any]:
        """One parameter set (``trial`` is only for the interface NNI's tuners share)."""
        return {name: sample(self._rng, spec) for name, spec in self._space.items()}

    def tell(self, trial: int, value: float | None) -> None:
        """Random search ignores results."""


def sample(rng: np.random.Generator, spec: Mapping[str, Any]) -> float | int:
    """One draw from an NNI spec of type uniform, quniform, (q)loguniform, choice or randint."""
    kind, value = spec["_type"], spec["_value"]
    if kind == "choice":
        return value[int(rng.integers(len(value)))]
    if kind == "randint":
        return int(rng.integers(value[0], value[1]))
    low, high = float(value[0]), float(value[1])
    if kind.endswith("loguniform"):
        drawn = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        drawn = float(rng.uniform(low, high))
    if kind.startswith("q"):
        step = float(value[2])
        drawn = min(max(round(drawn / step) * step, low), high)
    return drawn
