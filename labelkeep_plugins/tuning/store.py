"""What ``labelkeep tune`` keeps in its output folder, and reading it back to resume.

Layout of ``--out DIR``::

    DIR/results.json          settings, every finished trial, the ranking and the best
    DIR/best.yaml             the best trial's configuration (``labelkeep run --config``)
    DIR/trials/NNN/           labelkeep.yaml, report.json and output.log of trial NNN
                              (000 is the plain baseline)

``results.json`` is rewritten atomically after every trial, so an interrupted search
loses at most the trial that was running. On resume each finished trial's figures are
read again from its own ``report.json``: the reports are the record, not a copy (and
with ``--metric``, each trial's ``output.log`` is the record of its metric).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labelkeep_plugins.errors import ConfigError, LabelkeepError
from labelkeep_plugins.experiments.objective import Measurement, measurement_from_report
from labelkeep_plugins.experiments.trial import LOG_FILE, REPORT_FILE
from labelkeep_plugins.jsonfile import write_json
from labelkeep_plugins.tuning.metric import DEFAULT_MODE, Metric

FORMAT = "labelkeep-tune-results"
VERSION = 1
RESULTS_FILE = "results.json"
BEST_FILE = "best.yaml"


@dataclass(frozen=True)
class SearchSettings:
    """What makes two runs of ``labelkeep tune`` the same search (and so resumable)."""

    command: tuple[str, ...]
    algorithm: str
    seed: int
    tolerance: float
    search_space: dict[str, Any]
    base_config: dict[str, Any]
    metric: str | None = None  # --metric: the regex, or None for the report's accuracy
    metric_mode: str = DEFAULT_MODE

    @property
    def user_metric(self) -> Metric | None:
        """The ``--metric`` to read from each trial's output, if any."""
        return None if self.metric is None else Metric(self.metric, self.metric_mode)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": list(self.command),
            "algorithm": self.algorithm,
            "seed": self.seed,
            "tolerance": self.tolerance,
            "search_space": self.search_space,
            "base_config": self.base_config,
            "metric": self.metric,
            "metric_mode": self.metric_mode,
        }


@dataclass
class TrialRecord:
    """One finished trial (number 0 is the plain baseline)."""

    trial: int
    status: str  # ok | failed
    parameters: dict[str, Any] | None
    loss: dict[str, Any]
    exit_code: int | None
    seconds: float
    error: str | None = None
    measurement: Measurement | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self, out: Path) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "status": self.status,
            "parameters": self.parameters,
            "loss": self.loss,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "agreement": None if self.measurement is None else self.measurement.to_dict(),
            "report": str(trial_dir(out, self.trial).relative_to(out) / REPORT_FILE),
        }


def trial_dir(out: Path, trial: int) -> Path:
    return out / "trials" / f"{trial:03d}"


def save_results(
    out: Path, settings: SearchSettings, records: dict[int, TrialRecord], summary: dict[str, Any]
) -> Path:
    """Write ``results.json`` atomically; ``summary`` holds the ranking and the best trial."""
    path = out / RESULTS_FILE
    data = {
        "format": FORMAT,
        "version": VERSION,
        "settings": settings.to_dict(),
        "trials": [records[n].to_dict(out) for n in sorted(records)],
        **summary,
    }
    write_json(path, data)
    return path


def load_results(out: Path) -> tuple[SearchSettings, dict[int, TrialRecord]] | None:
    """The finished search in ``out``, or None when there is none to resume."""
    path = out / RESULTS_FILE
    if not path.exists():
        return None
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _unusable(path, "it is not a results file of labelkeep tune")
    if data.get("version") != VERSION:
        raise _unusable(path, f"it has format version {data.get('version')!r}, not {VERSION}")
    try:
        settings = _settings(data["settings"])
        records = [_record(out, item, settings.user_metric) for item in data["trials"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise _unusable(path, f"it is incomplete or damaged ({type(exc).__name__}: {exc})") from exc
    by_number = {record.trial: record for record in records}
    if sorted(by_number) != list(range(len(records))):
        raise _unusable(path, f"its trial numbers {sorted(by_number)} are not 0, 1, 2, ...")
    return settings, by_number


def read_measurement(out: Path, trial: int, metric: Metric | None = None) -> Measurement:
    """Read a finished trial's figures from its own report and, with ``metric``, its output."""
    path = trial_dir(out, trial) / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise LabelkeepError(f"its run report {str(path)!r} cannot be read ({reason})") from exc
    measured = measurement_from_report(report, source=f"run report {str(path)!r}")
    if metric is None:
        return measured
    return replace(measured, metric=metric.read_log(trial_dir(out, trial) / LOG_FILE))


def _settings(data: dict[str, Any]) -> SearchSettings:
    command = data["command"]
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise ValueError("settings.command must be a list of strings")
    return SearchSettings(
        command=tuple(command),
        algorithm=str(data["algorithm"]),
        seed=int(data["seed"]),
        tolerance=float(data["tolerance"]),
        search_space=dict(data["search_space"]),
        base_config=dict(data["base_config"]),
        metric=None if data.get("metric") is None else str(data["metric"]),
        metric_mode=str(data.get("metric_mode", DEFAULT_MODE)),
    )


def _record(out: Path, item: dict[str, Any], metric: Metric | None) -> TrialRecord:
    status = item["status"]
    if status not in ("ok", "failed"):
        raise ValueError(f"trial status must be ok or failed, got {status!r}")
    record = TrialRecord(
        trial=int(item["trial"]),
        status=status,
        parameters=item["parameters"],
        loss=dict(item["loss"]),
        exit_code=item["exit_code"],
        seconds=float(item["seconds"]),
        error=item.get("error"),
    )
    if record.ok:
        try:
            record.measurement = read_measurement(out, record.trial, metric)
        except LabelkeepError as exc:
            raise _unusable(
                out / RESULTS_FILE, f"trial {record.trial} is recorded as finished, but {exc}"
            ) from exc
    return record


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _unusable(path, f"it cannot be read ({exc.strerror})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise _unusable(path, f"it is not valid JSON ({exc})") from exc


def _unusable(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"cannot resume from {str(path)!r}: {why}. To start a fresh search, delete that "
        f"file (or its whole folder {str(path.parent)!r}), or pass another --out folder"
    )
