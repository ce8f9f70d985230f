"""What the bench runs: its settings, the key of each run, each run's command and configuration.

Every run is the cell's script in a child process under the runner (the zero-code path),
evaluated on the ``test`` split with an evaluation seed. Tuning runs the same script with
the validation seed on the ``val`` split, so the tuned configuration is chosen without
ever seeing the test numbers it is then reported on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.cells import FRAMEWORKS, SCRIPTS_DIR, Cell
from labelkeep_plugins.config import Config, LossConfig

PLAIN, DEFAULT, TUNED, ONLINE = "plain", "default", "tuned", "online"
# Plain recovery plus a teacher term too small to matter (1e-6): how far the figures move from
# a perturbation of float rounding size alone. Short, heavily compressed recoveries are chaotic.
PERTURBED = "perturbed"
PERTURBED_LOSS: dict[str, Any] = {"weights": {"ce": 1.0, "kd": 1e-6}, "focal": None}
MULTISEED = "_multiseed.py"
PLAIN_LOSS: dict[str, Any] = {"weights": {"ce": 1.0}}
METHOD_LABELS = {
    PLAIN: "plain recovery",
    PERTURBED: "plain, perturbed",
    DEFAULT: "labelkeep default",
    TUNED: "labelkeep tuned",
    ONLINE: "labelkeep online",
}


@dataclass(frozen=True, order=True)
class RunKey:
    """One run: a cell (``framework/dataset``), a method and an evaluation seed."""

    cell: str
    method: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.cell} {self.method} seed {self.seed}"

    def directory(self, out: Path) -> Path:
        return out / "runs" / self.cell.replace("/", "-") / self.method / f"seed{self.seed}"


@dataclass(frozen=True)
class BenchSettings:
    """What makes two bench invocations the same bench (and so resumable)."""

    profile: str
    cells: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    trials: int
    epochs: int
    pretrain_epochs: int
    validation_seeds: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchSettings:
        return cls(
            profile=str(data["profile"]),
            cells=tuple(str(c) for c in data["cells"]),
            methods=tuple(str(m) for m in data["methods"]),
            seeds=tuple(int(s) for s in data["seeds"]),
            trials=int(data["trials"]),
            epochs=int(data["epochs"]),
            pretrain_epochs=int(data["pretrain_epochs"]),
            validation_seeds=tuple(int(s) for s in data["validation_seeds"]),
        )

    def run_keys(self) -> list[RunKey]:
        """Every evaluation run, cell by cell, so an interrupted bench has whole cells."""
        return [
            RunKey(cell, method, seed)
            for cell in self.cells
            for method in self.methods
            for seed in self.seeds
        ]


def script_command(
    cell: Cell, seeds: Sequence[int], split: str, settings: BenchSettings, out: Path
) -> list[str]:
    """The user-style command line of one run (the same for every method of a seed).

    The pretrained checkpoint is shared by the methods of one cell and seed: the first
    run trains and saves it, the others load it, and all compress the very same model.
    Several seeds (tuning) run one after the other in one process (``_multiseed.py``).
    """
    script = SCRIPTS_DIR / FRAMEWORKS[cell.framework].script
    cache = out / "cache"
    if len(seeds) == 1:
        start = [sys.executable, str(script), "--seed", str(seeds[0])]
    else:
        seed_list = ",".join(map(str, seeds))
        start = [sys.executable, str(SCRIPTS_DIR / MULTISEED), str(script), "--seeds", seed_list]
    return [
        *start,
        "--dataset",
        cell.dataset,
        "--split",
        split,
        "--epochs",
        str(settings.epochs),
        "--pretrain-epochs",
        str(settings.pretrain_epochs),
        "--pretrained",
        str(cache / "pretrained" / f"{cell.model_slug}-seed{{seed}}.pt"),
        "--data-dir",
        str(cache / "data"),
        *cell.args,
    ]


def method_config(method: str, tuned_loss: dict[str, Any] | None = None) -> Config:
    """The labelkeep configuration of a method (``tuned`` needs the tuner's best loss)."""
    if method == PLAIN:
        return Config(loss=LossConfig.from_value(PLAIN_LOSS), tuner="fixed")
    if method == PERTURBED:
        return Config(loss=LossConfig.from_value(PERTURBED_LOSS), tuner="fixed")
    if method == DEFAULT:
        return Config(tuner="fixed")
    if method == ONLINE:
        return Config(tuner=ONLINE)
    if method == TUNED and tuned_loss is not None:
        return Config(loss=LossConfig.from_value(tuned_loss), tuner="fixed")
    raise ValueError(f"no configuration for method {method!r}")
