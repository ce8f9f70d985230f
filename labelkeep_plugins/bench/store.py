"""What ``labelkeep bench`` keeps in ``--out``, written after every run, and read back to resume.

Layout::

    OUT/results.json            settings, every finished run's figures, tuning, summary
    OUT/results.md              the table in Markdown
    OUT/mismatches.png          the plot (when matplotlib is installed)
    OUT/runs/CELL/METHOD/seedN  labelkeep.yaml, report.json, output.log of one x1 run
    OUT/runs/CELL-xB/METHOD/... the same for a run at B times the recovery epochs
    OUT/tune/CELL/              the labelkeep tune folder of one cell (validation seeds)
    OUT/cache/                  the data sets and pretrained checkpoints the scripts share

``results.json`` is replaced atomically after each run, so an interrupt loses at most the
run in flight; ``--resume`` keeps the finished runs and redoes failed or missing ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.plan import BenchSettings, RunKey
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.jsonfile import write_json

FORMAT = "labelkeep-bench-results"
VERSION = 1
RESULTS_FILE = "results.json"


@dataclass
class RunResult:
    """One finished run: ok with its figures, or failed with the reason."""

    key: RunKey
    status: str  # ok | failed
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] | None = None
    error: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.key.cell,
            "method": self.key.method,
            "seed": self.key.seed,
            "budget": self.key.budget,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "figures": self.figures,
            "loss": self.loss,
            "error": self.error,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        status = data["status"]
        if status not in ("ok", "failed"):
            raise ValueError(f"run status must be ok or failed, got {status!r}")
        return cls(
            key=RunKey(
                str(data["cell"]),
                str(data["method"]),
                int(data["seed"]),
                int(data.get("budget", 1)),  # results written before budgets: all x1
            ),
            status=status,
            seconds=float(data["seconds"]),
            figures=dict(data.get("figures") or {}),
            loss=data.get("loss"),
            error=data.get("error"),
            note=data.get("note"),
        )


@dataclass
class BenchRecord:
    """Everything ``results.json`` holds, in memory."""

    settings: BenchSettings
    runs: dict[RunKey, RunResult] = field(default_factory=dict)
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def finished(self, key: RunKey) -> bool:
        result = self.runs.get(key)
        return result is not None and result.ok

    def save(self, out: Path, summary: dict[str, Any]) -> Path:
        path = out / RESULTS_FILE
        data = {
            "format": FORMAT,
            "version": VERSION,
            "settings": self.settings.to_dict(),
            "skipped": self.skipped,
            "notes": self.notes,
            "tuning": self.tuning,
            "runs": [self.runs[key].to_dict() for key in sorted(self.runs)],
            "summary": json_safe(summary),
        }
        write_json(path, data)
        return path


def load_record(out: Path) -> BenchRecord | None:
    """The bench stored in ``out``, or None when there is none."""
    path = out / RESULTS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _unusable(path, f"it cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _unusable(path, "it is not a results file of labelkeep bench")
    if data.get("version") != VERSION:
        raise _unusable(path, f"it has format version {data.get('version')!r}, not {VERSION}")
    try:
        record = BenchRecord(BenchSettings.from_dict(data["settings"]))
        for item in data["runs"]:
            result = RunResult.from_dict(item)
            record.runs[result.key] = result
        record.tuning = dict(data.get("tuning") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise _unusable(path, f"it is incomplete or damaged ({type(exc).__name__}: {exc})") from exc
    return record


def check_same(stored: BenchSettings, wanted: BenchSettings, out: Path) -> None:
    """Refuse to resume a bench with other settings (its numbers would not be comparable)."""
    for key, value in wanted.to_dict().items():
        before = stored.to_dict()[key]
        if before != value:
            raise ConfigError(
                f"{out / RESULTS_FILE} holds a bench with another {key} ({before!r}, now "
                f"{value!r}); to resume it, rerun with the same options; to start a fresh "
                f"bench, pass another --out or delete {str(out)!r}"
            )


def json_safe(value: Any) -> Any:
    """Infinite ratios (nothing left to count) as the string 'inf': JSON has no infinity."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _unusable(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"cannot resume from {str(path)!r}: {why}. To start a fresh bench, delete it "
        f"(or its folder) or pass another --out"
    )
