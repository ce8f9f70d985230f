"""The torch-pruning adapter: snapshot before the pruner touches the model, loss after ``step()``.

Where (torch-pruning 1.6.1):

* ``BasePruner.__init__``: every pruner class runs it (``MetaPruner`` and
  ``MagnitudePruner`` are the same class; the regularising pruners call it through
  ``super()``), so patching the class attribute reaches all of them, even for users
  who imported the classes first. The reference is taken at its entry, before the
  dependency-graph tracer runs ``model.eval()`` and before any sparse training.
* ``DependencyGraph.build_dependency``: the same for the low-level API (a graph
  built without a pruner). Inside a pruner's construction it only passes through.
* ``BasePruner.step`` and ``Group.prune``: the model has been pruned, so the loss
  may act (see :mod:`labelkeep_torch_pruning.recovery` for why it waits), and the
  session hears that the student changed (an iterative schedule's later steps close the
  catch-up gate until the pruned student is measured).

The injector goes on the root module: ``step()`` replaces parameters and buffers,
but the root module object survives, and under DDP its hooks fire inside DDP's forward.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from types import GeneratorType
from typing import Any

from torch import nn

from labelkeep_plugins.zero_code.adapter_api import (
    ConfigError,
    PatchingAdapter,
    Session,
    logger,
    unwrap_model,
)
from labelkeep_torch_pruning.recovery import StudentPhase

LOSS_DURING_IMPORTANCE_ENV = "LABELKEEP_TP_LOSS_DURING_IMPORTANCE"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def loss_during_importance_from_env() -> bool:
    """``LABELKEEP_TP_LOSS_DURING_IMPORTANCE``: 1/true/yes/on, else off (the default)."""
    value = os.environ.get(LOSS_DURING_IMPORTANCE_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        logger.warning(
            f"torch-pruning: {LOSS_DURING_IMPORTANCE_ENV}={value!r} is not one of "
            f"1/true/yes/on or 0/false/no/off; using the default (off)"
        )
    return False


class TorchPruningAdapter(PatchingAdapter):
    """Patches torch-pruning so the pruned model trains against labelkeep's loss.

    ``loss_during_importance``: whether the loss also acts between the pruner's
    construction and the first pruning (importance estimation, sparse training).
    ``None`` reads ``LABELKEEP_TP_LOSS_DURING_IMPORTANCE`` when instrumenting.
    """

    name = "torch-pruning"
    framework = "torch-pruning"
    distribution = "labelkeep-torch-pruning"  # its pin on torch-pruning: the supported range
    module = "torch_pruning"

    def __init__(self, *, loss_during_importance: bool | None = None) -> None:
        super().__init__()
        self._option = loss_during_importance
        self.loss_during_importance = False
        self._phases: weakref.WeakKeyDictionary[nn.Module, StudentPhase] = (
            weakref.WeakKeyDictionary()
        )
        self._local = threading.local()

    # -- lifecycle ---------------------------------------------------------------------------

    def install(self, session: Session) -> None:
        """Patch the four entry points (the host undoes them all if one fails part-way)."""
        # Import paths valid in 1.5 (a dependency module) and 1.6 (a dependency package).
        from torch_pruning.dependency import DependencyGraph, Group
        from torch_pruning.pruner import BasePruner

        self.loss_during_importance = self._resolve_option(session)
        self._wrap_entry(BasePruner, "__init__", "BasePruner.__init__", nested=False)
        self._wrap_entry(
            DependencyGraph, "build_dependency", "DependencyGraph.build_dependency", nested=True
        )
        self._wrap_step(BasePruner)
        self._wrap_group_prune(Group)

    def _resolve_option(self, session: Session) -> bool:
        """Constructor argument, else the environment variable if set, else the config file."""
        options = dict(session.config.adapters.get(self.name, {}))
        unknown = sorted(set(options) - {"loss_during_importance"})
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for adapter {self.name!r}; "
                "allowed: loss_during_importance"
            )
        if self._option is not None:
            return self._option
        if os.environ.get(LOSS_DURING_IMPORTANCE_ENV, "").strip():
            return loss_during_importance_from_env()
        value = options.get("loss_during_importance", False)
        if not isinstance(value, bool):
            raise ConfigError(
                f"adapters.{self.name}.loss_during_importance must be true or false, got {value!r}"
            )
        return value

    def uninstrument(self) -> None:
        for phase in list(self._phases.values()):
            phase.close()
        self._phases = weakref.WeakKeyDictionary()
        super().uninstrument()

    # -- patches -----------------------------------------------------------------------------

    def _wrap_entry(self, owner: type, attribute: str, where: str, *, nested: bool) -> None:
        """Reference at entry, original (traced with the injector muted), then attach and hold."""
        original = getattr(owner, attribute)
        adapter = self

        @functools.wraps(original)
        def entry(this: Any, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
            if adapter.session is None or (nested and adapter._constructing()):
                return original(this, model, *args, **kwargs)
            with adapter._before_compression(model, where):
                result = original(this, model, *args, **kwargs)
            adapter._after_construction(model)
            return result

        self.patches.patch(owner, attribute, entry)

    def _wrap_step(self, owner: type) -> None:
        original = owner.step
        adapter = self

        @functools.wraps(original)
        def step(pruner: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(pruner, *args, **kwargs)
            model = getattr(pruner, "model", None)
            if isinstance(result, GeneratorType):  # step(interactive=True)
                return adapter._open_when_done(result, model)
            adapter._pruned(model)
            return result

        self.patches.patch(owner, "step", step)

    def _wrap_group_prune(self, owner: type) -> None:
        original = owner.prune
        adapter = self

        @functools.wraps(original)
        def prune(group: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(group, *args, **kwargs)
            adapter._pruned(getattr(getattr(group, "_DG", None), "model", None))
            return result

        self.patches.patch(owner, "prune", prune)

    # -- what the patches do -----------------------------------------------------------------

    @contextmanager
    def _before_compression(self, model: nn.Module, where: str) -> Iterator[None]:
        """Snapshot on first sight; mute an existing injector while torch-pruning traces."""
        with ExitStack() as stack:
            session = self.session
            if session is not None:
                with session.guard(self.name):
                    session.reference_for(model, framework=self.framework, where=where)
                    stack.enter_context(self._quiet(model))
            self._local.depth = self._constructing() + 1
            try:
                yield
            finally:
                self._local.depth -= 1

    def _quiet(self, model: nn.Module) -> AbstractContextManager[None]:
        """The tracer's forward (eval mode, example inputs) is no evaluation batch."""
        session = self.session
        handle = session.handle_of(unwrap_model(model)) if session is not None else None
        return handle.muted() if handle is not None else nullcontext()

    def _after_construction(self, model: nn.Module) -> None:
        session = self.session
        if session is None:
            return
        with session.guard(self.name):
            student = unwrap_model(model)
            handle = session.attach(student)
            phase = self._phases.get(student)
            if phase is None:
                phase = StudentPhase(
                    handle, warn=self._warn, guard=functools.partial(session.guard, self.name)
                )
                self._phases[student] = phase
            phase.adopt(handle)
            if not self.loss_during_importance:
                phase.hold()

    def _pruned(self, model: nn.Module | None) -> None:
        session = self.session
        if session is None or model is None:
            return
        with session.guard(self.name):
            phase = self._phases.get(unwrap_model(model))
            if phase is not None:
                phase.open()
                session.student_changed(model, "torch-pruning: pruned")

    def _open_when_done(
        self, groups: Generator[Any, Any, Any], model: nn.Module | None
    ) -> Generator[Any, Any, Any]:
        """An interactive step counts as done when its generator is exhausted or closed."""
        try:
            return (yield from groups)
        finally:
            self._pruned(model)

    def _constructing(self) -> int:
        return getattr(self._local, "depth", 0)

    def _warn(self, message: str) -> None:
        """One line, once, through the session once there is one."""
        self.notices.say(message)
