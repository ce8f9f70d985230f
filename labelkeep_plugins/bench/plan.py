"""What the bench runs: its settings, the key of each run, each run's command and configuration.

Every run is the cell's script in a child process under the runner (the zero-code path),
evaluated on the ``test`` split with an evaluation seed. Tuning runs the same script with
the validation seed on the ``val`` split, so the tuned configuration is chosen without
ever seeing the test numbers it is then reported on.

A run's recovery budget multiplies the script's own recovery epochs (``x1`` is what the
script does; users who can afford it recover longer). The budget is part of the run's
identity, so runs of two budgets never share a folder or a record entry.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.cells import FRAMEWORKS, SCRIPTS_DIR, Cell
from labelkeep_plugins.config import Config, LossConfig

PLAIN, DEFAULT, TUNED = "plain", "default", "tuned"
SOFTADAPT, FM, LIMIT = "softadapt", "fm", "limit"
# Plain recovery plus a teacher term too small to matter (1e-6): how far the figures move from
# a perturbation of float rounding size alone. Short, heavily compressed recoveries are chaotic.
PERTURBED = "perturbed"
PERTURBED_LOSS: dict[str, Any] = {"weights": {"ce": 1.0, "kd": 1e-6}, "focal": None}
PLAIN_LOSS: dict[str, Any] = {"weights": {"ce": 1.0}}
# Long pure distillation: what recovery can reach in the cell at all (its "limit" row).
LIMIT_LOSS: dict[str, Any] = {"weights": {"ce": 0.0, "kd": 1.0}, "temperature": 4.0, "focal": None}
LIMIT_BUDGET = 10
FM_WEIGHT = 1.0
MULTISEED = "_multiseed.py"
METHOD_LABELS = {
    PLAIN: "plain recovery",
    PERTURBED: "plain, perturbed",
    DEFAULT: "labelkeep default",
    SOFTADAPT: "labelkeep softadapt",
    TUNED: "labelkeep tuned",
    FM: "labelkeep default + fm",
    LIMIT: "limit (KD, 10x epochs)",
}
# Every row name --methods accepts.
KNOWN_METHODS: tuple[str, ...] = tuple(METHOD_LABELS)


@dataclass(frozen=True, order=True)
class RunKey:
    """One run: a cell (``framework/dataset/level``), a method, a seed and a budget."""

    cell: str
    method: str
    seed: int
    budget: int = 1  # x the script's recovery epochs

    @property
    def label(self) -> str:
        budget = "" if self.budget == 1 else f" x{self.budget}"
        return f"{self.cell}{budget} {self.method} seed {self.seed}"

    def directory(self, out: Path) -> Path:
        """``runs/CELL[-xB]/METHOD/seedN``: the folders ``bench.sweep`` uses for the same run."""
        cell = self.cell.replace("/", "-") + ("" if self.budget == 1 else f"-x{self.budget}")
        return out / "runs" / cell / self.method / f"seed{self.seed}"


def run_budget(method: str, budget: int) -> int:
    """The budget a method's run actually gets: the limit row always runs at 10x."""
    return LIMIT_BUDGET if method == LIMIT else budget


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
    budgets: tuple[int, ...] = (1,)

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
            budgets=tuple(int(b) for b in data.get("budgets", (1,))),
        )

    def run_keys(self) -> list[RunKey]:
        """Every evaluation run, cell by cell and budget by budget; the limit row once a cell."""
        keys = []
        for cell in self.cells:
            for budget in self.budgets:
                keys += [
                    RunKey(cell, method, seed, budget)
                    for method in self.methods
                    if method != LIMIT
                    for seed in self.seeds
                ]
            if LIMIT in self.methods:
                keys += [RunKey(cell, LIMIT, seed, LIMIT_BUDGET) for seed in self.seeds]
        return keys


def pretrained_path(cell: Cell, out: Path) -> str:
    """The checkpoint both levels of a model share, with ``{seed}`` left for the script."""
    return str(out / "cache" / "pretrained" / f"{cell.model_slug}-seed{{seed}}.pt")


def script_command(
    cell: Cell,
    seeds: Sequence[int],
    split: str,
    settings: BenchSettings,
    out: Path,
    budget: int = 1,
) -> list[str]:
    """The user-style command line of one run (the same for every method of a seed).

    The pretrained checkpoint is shared by the methods (and levels, and budgets) of one
    model and seed: the first run trains and saves it, the others load it, and all compress
    the very same model. Several seeds (tuning) run one after the other in one process
    (``_multiseed.py``). ``budget`` multiplies ``settings.epochs``.
    """
    script = SCRIPTS_DIR / FRAMEWORKS[cell.framework].script
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
        str(settings.epochs * budget),
        "--pretrain-epochs",
        str(settings.pretrain_epochs),
        "--pretrained",
        pretrained_path(cell, out),
        "--data-dir",
        str(out / "cache" / "data"),
        *cell.args,
    ]


def method_config(method: str, tuned_loss: dict[str, Any] | None = None) -> Config:
    """The labelkeep configuration of a method (``tuned`` needs the tuner's best loss).

    ``default`` is exactly ``Config()``, so the row always measures what a user who
    configures nothing gets, tuner included; ``fm`` is that plus the function-matching term.
    """
    fixed = {
        PLAIN: PLAIN_LOSS,
        PERTURBED: PERTURBED_LOSS,
        LIMIT: LIMIT_LOSS,
        TUNED: tuned_loss,
    }
    if fixed.get(method) is not None:
        return Config(loss=LossConfig.from_value(fixed[method]), tuner="fixed")
    if method == DEFAULT:
        return Config()
    if method == SOFTADAPT:
        return Config(tuner=method)
    if method == FM:
        base = Config()
        weights = {**base.loss.weights, FM: FM_WEIGHT}
        return replace(base, loss=base.loss.with_overrides(weights=weights))
    raise ValueError(f"no configuration for method {method!r}")
