"""The tuned method: ``labelkeep tune`` per cell, on the validation seeds and split only.

The search is ``labelkeep tune``'s own (trial runner, objective, NNI tuner, resume), run
in-process on the cell's script with the validation seeds (every trial runs all of them,
summed) and ``--split val``: trial 0 is plain recovery, the best trial has the fewest
mismatches at no less accuracy than plain's on the validation slice. The bench then runs
that configuration on the evaluation seeds and the test split, which the search never saw.
When no setting beat plain on validation, the tuned configuration *is* plain recovery, and
the bench says so.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.cells import Cell
from labelkeep_plugins.bench.plan import PLAIN_LOSS, BenchSettings, script_command
from labelkeep_plugins.config import Config
from labelkeep_plugins.experiments.tables import TextSink
from labelkeep_plugins.tuning.search import INTERRUPTED, TuneRequest, tune
from labelkeep_plugins.tuning.space import default_search_space
from labelkeep_plugins.tuning.store import RESULTS_FILE

ALGORITHM = "tpe"
# The user's own loss weight (so a trial can lean on the teacher, as classic KD's ce 0.1 does),
# KD and hard labels, with the temperature and focal scale default_search_space adds for them.
# logit_mse is left out: with a handful of trials every extra dimension dilutes the search.
SEARCHED_TERMS = ("ce", "kd", "hard")


@dataclass(frozen=True)
class TuningOutcome:
    """The configuration the search chose for one cell, or why there is none."""

    loss: dict[str, Any] | None
    best_trial: int | None
    parameters: dict[str, Any] | None
    error: str | None = None

    @property
    def kept_plain(self) -> bool:
        return self.best_trial == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "best_trial": self.best_trial,
            "parameters": self.parameters,
            "kept_plain": self.kept_plain,
            "error": self.error,
        }


def tune_directory(out: Path, cell: Cell) -> Path:
    return out / "tune" / cell.slug


def tune_cell(cell: Cell, settings: BenchSettings, out: Path, stream: TextSink) -> TuningOutcome:
    """Search (or resume searching) the cell's loss weights; raises KeyboardInterrupt on ^C."""
    folder = tune_directory(out, cell)
    if _complete(folder, settings.trials):
        return read_outcome(folder)
    request = TuneRequest(
        command=tuple(script_command(cell, settings.validation_seeds, "val", settings, out)),
        trials=settings.trials,
        out=folder,
        search_space=default_search_space(SEARCHED_TERMS),
        base=Config(),
        algorithm=ALGORITHM,
        seed=zlib.crc32(cell.key.encode()) % 2**31,
        tolerance=0.0,
    )
    code = tune(request, stream=stream)
    if code == INTERRUPTED:
        raise KeyboardInterrupt
    return read_outcome(folder)


def _complete(folder: Path, trials: int) -> bool:
    """A finished search of this size is read back, not replayed (it would print it all again)."""
    try:
        results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return (
        isinstance(results, dict)
        and results.get("complete") is True
        and len(results.get("trials") or []) == trials + 1
    )


def read_outcome(folder: Path) -> TuningOutcome:
    """The best configuration recorded in a finished ``labelkeep tune`` folder."""
    try:
        results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return TuningOutcome(None, None, None, f"cannot read the tuning results ({exc})")
    best = results.get("best") if isinstance(results, dict) else None
    if not isinstance(best, dict):
        return TuningOutcome(None, None, None, f"tuning found no usable trial; see {folder}")
    loss = PLAIN_LOSS if best.get("trial") == 0 else best.get("loss")
    return TuningOutcome(dict(loss or {}), int(best["trial"]), best.get("parameters"))
