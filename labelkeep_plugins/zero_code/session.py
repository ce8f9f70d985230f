"""One instrumented process: its references, its attached students and what it will report.

Adapters talk to the session only: ``reference_for`` when compression is about
to start, ``attach`` when the model is handed to a training loop, and ``guard``
around their own code so that a labelkeep failure never stops the user's run.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from labelkeep_plugins._version import __version__
from labelkeep_plugins.budget import mismatch_trend
from labelkeep_plugins.config import Config
from labelkeep_plugins.errors import LabelkeepError
from labelkeep_plugins.log import logger
from labelkeep_plugins.loss.composer import LossComposer
from labelkeep_plugins.metrics import AgreementMeter
from labelkeep_plugins.plugins import load_plugins
from labelkeep_plugins.reference.snapshot import checksum, snapshot_reference, unwrap_model
from labelkeep_plugins.tuners.base import make_tuner
from labelkeep_plugins.zero_code.exit_notices import exit_notices, standalone_attaches
from labelkeep_plugins.zero_code.report_files import distributed_rank

if TYPE_CHECKING:
    from labelkeep_plugins.injector.attach import InjectionHandle
    from labelkeep_plugins.zero_code.report_schema import (
        ActiveRunReport,
        AdapterEntry,
        AgreementFigures,
        RecoveryBudgetEntry,
        ReferenceCacheEntry,
        ReferenceEntry,
    )


@dataclass
class ReferenceRecord:
    """Where and from what a reference was taken, and its checksum then."""

    framework: str
    where: str
    model_type: str
    reference: nn.Module
    checksum: str

    def as_dict(self) -> ReferenceEntry:
        return {
            "framework": self.framework,
            "where": self.where,
            "model": self.model_type,
            "checksum": self.checksum,
            "intact": checksum(self.reference) == self.checksum,
        }


@dataclass
class AdapterStatus:
    """What became of one adapter in this process."""

    name: str
    framework: str
    version: str | None
    state: str  # active | waiting-for-import | skipped | disabled | failed
    reason: str = ""

    def as_dict(self) -> AdapterEntry:
        return cast("AdapterEntry", dict(vars(self)))


@dataclass
class Counters:
    """Training steps that received the loss by a route other than an injector handle."""

    framework_steps: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Session:
    """The state of labelkeep in one process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tuner = make_tuner(config)  # an unknown tuner name fails here, not silently
        self.composer = LossComposer(self.tuner.loss_config())
        bind = getattr(self.tuner, "bind", None)
        if callable(bind):  # tuners that learn during the run switch the loss between steps
            bind(self.composer.defer)
        self.adapters: dict[str, AdapterStatus] = {}
        self.counters = Counters()
        self.crashed: str | None = None
        self.distributed_rank: int | None = None  # names this process's report (.report_files)
        self._records: list[ReferenceRecord] = []
        self._by_model: weakref.WeakKeyDictionary[nn.Module, ReferenceRecord] = (
            weakref.WeakKeyDictionary()
        )
        self._all_handles: list[InjectionHandle] = []
        self._standalone_before = standalone_attaches()
        self._plugin_manager = load_plugins()
        self._hooks = self._plugin_manager.hook

    def reference_for(self, model: nn.Module, *, framework: str, where: str) -> nn.Module:
        """The reference of ``model``: snapshotted now on first sight, the same one afterwards."""
        model = unwrap_model(model)
        record = self._by_model.get(model)
        if record is None:
            if self.distributed_rank is None:
                self.distributed_rank = distributed_rank()
            reference = snapshot_reference(model)
            record = ReferenceRecord(
                framework, where, type(model).__name__, reference, checksum(reference)
            )
            self._records.append(record)
            self._by_model[model] = record
            self._hooks.labelkeep_reference_captured(
                student=model, reference=reference, where=f"{framework}: {where}"
            )
        return record.reference

    def reference_of(self, model: nn.Module) -> nn.Module | None:
        record = self._by_model.get(unwrap_model(model))
        return None if record is None else record.reference

    def alias(self, model: nn.Module, same_as: nn.Module) -> None:
        """Give ``model`` (e.g. a traced or rebuilt copy) the reference of ``same_as``."""
        record = self._by_model.get(unwrap_model(same_as))
        if record is not None:
            self._by_model.setdefault(unwrap_model(model), record)

    def attach(self, student: nn.Module, reference: nn.Module | None = None) -> InjectionHandle:
        """Attach the loss to ``student`` once; later calls return the same handle."""
        handle = self.handle_of(student)
        if handle is not None:
            return handle
        reference = reference if reference is not None else self.reference_of(student)
        if reference is None:
            raise LabelkeepError(
                f"no reference was captured for {type(student).__name__}; "
                "the adapter must call reference_for() before attach()"
            )
        from labelkeep_plugins.injector.attach import InjectionHandle  # imports torch._dynamo

        handle = InjectionHandle(
            student,
            reference,
            self.composer,
            logits=self.config.logits,
            train_mode_only=self.config.train_mode_only,
            on_error=None if self.config.strict else self._injector_failed,
            reference_cache=_reference_cache(self.config),
            listener=self.tuner,  # it hears this handle's steps, and no other handle's
        )
        self._all_handles.append(handle)
        return handle

    def handle_of(self, student: nn.Module) -> InjectionHandle | None:
        """The session's live handle on ``student``: one map of students to handles, the
        injector's, of which the session's are those it made."""
        from labelkeep_plugins.injector.attach import handle_of  # imports torch._dynamo

        handle = handle_of(student)
        return handle if any(handle is mine for mine in self._all_handles) else None

    def student_changed(self, student: nn.Module, where: str) -> None:
        """An adapter changed ``student``'s function between training steps (a pruning
        round): the tuner hears it first, as it hears the steps, then the plugins."""
        from labelkeep_plugins.injector.listener import STUDENT_CHANGED, Events  # torch._dynamo

        events = Events(self._hooks, self.tuner)  # as a handle tells its steps: the same dispatch
        events.tell(STUDENT_CHANGED, student=unwrap_model(student), where=where)

    @contextmanager
    def guard(self, adapter: str) -> Iterator[None]:
        """Contain a failure of labelkeep's own code: warn and go on, or raise when strict."""
        try:
            yield
        except Exception as exc:
            if self.config.strict:
                raise
            self.record_failure(adapter, exc)

    def warn(self, adapter: str, message: str) -> None:
        """Tell the user once, on stderr and in the report, about something worth fixing."""
        line = f"{adapter}: {message}"
        if line not in self.counters.warnings:
            self.counters.warnings.append(line)
            logger.warning(line)

    def record_failure(self, adapter: str, exc: BaseException) -> None:
        message = f"{adapter}: {type(exc).__name__}: {exc}"
        if message not in self.counters.failures:
            self.counters.failures.append(message)
            logger.error(f"{message} (training continues; run with --strict to stop on this)")
        status = self.adapters.get(adapter)
        if status is not None:
            status.state, status.reason = "failed", f"{type(exc).__name__}: {exc}"

    def _injector_failed(self, handle: InjectionHandle, exc: Exception) -> None:
        """A hook failed inside the user's step: report it, detach, let training go on."""
        self.record_failure("injector", exc)
        handle.detach()

    def detach_all(self) -> None:
        for handle in reversed(self._all_handles):
            handle.detach()

    def _exit_notices(self, trained_steps: int) -> list[str]:
        """Notices of a run where labelkeep did nothing, or nothing useful (said at exit)."""
        own = standalone_attaches() - self._standalone_before
        return exit_notices(self._records, self._all_handles, own, trained_steps)

    def report(self) -> ActiveRunReport:
        """The JSON-serialisable run report (its shape: :mod:`.report_schema`).

        ``agreement`` covers the latest evaluation pass of each attached model (its
        final state); ``agreement_all_passes`` every evaluation forward of the run.
        ``passes_ambiguous`` lists, per model, where passes could not be told apart (so
        ``agreement`` may cover more or less than one pass); empty when they could.
        ``recovery_budget`` is a list with one dict per attached model, in attach order
        (always a list, so its shape does not depend on how many models there are): the
        model's class name under ``student`` and the fields of its
        :class:`~labelkeep_plugins.budget.BudgetVerdict`, which says whether mismatches
        were still falling over the last evaluation passes (so a longer recovery would help).
        """
        last, every = AgreementMeter(), AgreementMeter()
        via_value = via_gradient = 0
        for handle in self._all_handles:
            if handle.meter.samples:
                every.merge(handle.meter)
                last.merge(handle.last_pass_meter)
            via_value += handle.stats.via_loss_value
            via_gradient += handle.stats.via_gradient
        steps = self.counters.framework_steps
        trained = steps + via_value + via_gradient
        references = [record.as_dict() for record in self._records]
        return {
            "labelkeep_version": __version__,
            "active": True,  # False in the report of a run labelkeep could not start in
            "config": self.config.to_dict(),
            "tuner": self.tuner.state_dict(),
            "adapters": [status.as_dict() for status in self.adapters.values()],
            "references": references,
            "training_steps_with_loss": trained,
            "loss_paths": {"loss_value": via_value, "gradient": via_gradient, "framework": steps},
            "reference_intact": all(r["intact"] for r in references) if references else None,
            "agreement": _computed(last),
            "agreement_all_passes": _computed(every),
            "passes_ambiguous": _passes_ambiguous(self._all_handles),
            "recovery_budget": [_recovery_budget(handle) for handle in self._all_handles],
            "reference_cache": [
                cast("ReferenceCacheEntry", h.reference_cache.stats.as_dict())
                for h in self._all_handles
                if h.reference_cache
            ],
            "failures": list(self.counters.failures),
            "warnings": [
                *self.counters.warnings,
                *self._exit_notices(steps + via_value + via_gradient),
            ],
            "crashed": self.crashed,
            "distributed_rank": self.distributed_rank,
            "process_reports": [],  # the command's process fills it in (.auto)
        }


def _reference_cache(config: Config) -> Any:
    """A fresh cache per attached student, when the configuration asks for one."""
    settings = config.reference_cache
    if settings is None:
        return None
    from labelkeep_plugins.reference.cache import ReferenceCache

    return ReferenceCache(int(settings.max_mb * 2**20), copy_to_host=settings.copy_to_host)


def _recovery_budget(handle: InjectionHandle) -> RecoveryBudgetEntry:
    """The mismatch trend of one attached model over its last evaluation passes."""
    history = handle.pass_history
    verdict = {"student": type(handle.student).__name__, **mismatch_trend(history).to_dict()}
    return cast("RecoveryBudgetEntry", verdict)


def _passes_ambiguous(handles: list[InjectionHandle]) -> list[str]:
    """One line per model and kind of pass boundary that could not be told apart."""
    return [f"{type(h.student).__name__}: {note}" for h in handles for note in h.passes_ambiguous]


def _computed(meter: AgreementMeter) -> AgreementFigures | None:
    return cast("AgreementFigures", meter.compute().to_dict()) if meter.samples else None
