"""The run report's shape: typed dicts for Python readers, ``report.schema.json`` for the rest.

The report is the record of a run. ``labelkeep compare``, ``tune``, ``bench``, NNI trials
and reporter plugins read it back, and so do scripts that are not written in Python. Until
these types it was a plain dict, and a key renamed in :meth:`Session.report` broke its
readers only at run time. With them, mypy checks the code that builds a report and the code
that reads one. The JSON Schema (draft 2020-12, shipped with the package) describes the same
shape for readers outside Python. ``tests/test_report_schema.py`` validates real reports
against it and fails if a key is added to one of the two and not the other.

There are two kinds of report, told apart by ``active``. :class:`ActiveRunReport` comes from
a process labelkeep ran in (:meth:`Session.report`). :class:`InactiveRunReport` comes from
a process it could not start in (:func:`labelkeep_plugins.zero_code.auto.inactive_report`).
Each kind has all of its keys every time, so no key is ``NotRequired`` and ``typing`` is
enough on Python 3.10. The report has no format number: ``labelkeep_version`` says which
release wrote it.

``config`` and ``tuner`` stay loose. ``config`` is :meth:`Config.to_dict`, whose keys the
configuration validates itself. ``tuner`` is the tuner's ``state_dict()``, and a tuner from a
plugin chooses its own keys; only ``name`` is always there.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Literal, TypedDict

__all__ = [
    "SCHEMA_FILE",
    "ActiveRunReport",
    "AdapterEntry",
    "AdapterState",
    "AgreementFigures",
    "BudgetStatus",
    "InactiveRunReport",
    "LossPaths",
    "MismatchSpread",
    "RecoveryBudgetEntry",
    "ReferenceCacheEntry",
    "ReferenceEntry",
    "RunReport",
    "report_schema",
]

#: The JSON Schema file, beside this module in the installed package.
SCHEMA_FILE = "report.schema.json"

AdapterState = Literal["active", "waiting-for-import", "skipped", "disabled", "failed"]
BudgetStatus = Literal["falling", "flat", "rising", "too_few_passes", "no_passes"]


class ReferenceEntry(TypedDict):
    """One reference snapshot: where it was taken and whether it stayed unchanged."""

    framework: str
    where: str
    model: str
    checksum: str
    intact: bool


class AdapterEntry(TypedDict):
    """What became of one adapter in the process."""

    name: str
    framework: str
    version: str | None
    state: AdapterState
    reason: str


class LossPaths(TypedDict):
    """Training steps that got the loss, per route (they sum to ``training_steps_with_loss``)."""

    loss_value: int
    gradient: int
    framework: int


class MismatchSpread(TypedDict):
    """How unevenly mismatches fall on the classes."""

    std: float
    range: float


class AgreementFigures(TypedDict):
    """:meth:`AgreementReport.to_dict`: the compressed model against its reference.

    Class indices are JSON object keys, so they are strings.
    """

    samples: int
    mismatches: int
    mismatch_rate: float
    agreement_rate: float
    labelled: int
    negative_flips: int | None
    negative_flip_rate: float | None
    positive_flips: int | None
    positive_flip_rate: float | None
    negative_flip_impact: float | None
    reference_accuracy: float | None
    compressed_accuracy: float | None
    per_class_mismatch_rate: dict[str, float]
    per_class_mismatch_spread: MismatchSpread
    probability_loyalty: float | None
    topk_agreement: dict[str, float]


class RecoveryBudgetEntry(TypedDict):
    """One attached model's :class:`~labelkeep_plugins.budget.BudgetVerdict`, with its name."""

    student: str
    status: BudgetStatus
    passes_used: int
    slope_per_pass: float | None
    standard_error: float | None
    mismatches: list[int]
    samples_per_pass: int | None
    negative_flips: list[int] | None
    mixed_sample_counts: bool
    evaluation_passes: int
    message: str


class ReferenceCacheEntry(TypedDict):
    """What one attached model's reference cache did (``reference_cache`` in the config)."""

    hits: int
    misses: int
    bypassed: int
    evictions: int
    entries: int
    bytes: int
    hit_rate: float


class ActiveRunReport(TypedDict):
    """The report of a process labelkeep ran in: :meth:`Session.report`."""

    labelkeep_version: str
    active: Literal[True]
    config: dict[str, Any]
    tuner: dict[str, Any]
    adapters: list[AdapterEntry]
    references: list[ReferenceEntry]
    training_steps_with_loss: int
    loss_paths: LossPaths
    reference_intact: bool | None
    agreement: AgreementFigures | None
    agreement_all_passes: AgreementFigures | None
    passes_ambiguous: list[str]
    recovery_budget: list[RecoveryBudgetEntry]
    reference_cache: list[ReferenceCacheEntry]
    failures: list[str]
    warnings: list[str]
    crashed: str | None
    distributed_rank: int | None
    process_reports: list[str]


class InactiveRunReport(TypedDict):
    """The report of a process labelkeep could not start in (``"active": false``)."""

    labelkeep_version: str
    active: Literal[False]
    error: str
    config_file: str | None
    references: list[ReferenceEntry]
    training_steps_with_loss: int
    agreement: None
    failures: list[str]
    warnings: list[str]
    crashed: None


#: Either kind of report; ``report["active"]`` narrows it to one.
RunReport = ActiveRunReport | InactiveRunReport


def report_schema() -> dict[str, Any]:
    """The JSON Schema of the run report, as shipped with the package."""
    text = (
        resources.files("labelkeep_plugins.zero_code")
        .joinpath(SCHEMA_FILE)
        .read_text(encoding="utf-8")
    )
    schema: dict[str, Any] = json.loads(text)
    return schema
