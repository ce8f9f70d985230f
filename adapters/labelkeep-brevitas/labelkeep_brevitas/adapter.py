"""The Brevitas adapter: reference before quantization, the loss in QAT, PTQ left alone.

Where the float model stops being intact (Brevitas 0.13):
``layerwise_quantize`` replaces layers in place with quant layers that share the
float storage, and ``preprocess_for_quantize`` merges batch norm into the
original's conv weights in place. Users import those functions by name
(``from brevitas.graph.quantize import quantize``), often before labelkeep is
active in-process, so patching the functions themselves would miss them. The
adapter patches the module globals they look up at *call time* instead:

* ``symbolic_trace`` (first call of ``preprocess_for_quantize``) and
  ``TorchFunctionalToModule`` (first with ``trace_model=False``): reference;
* ``inp_placeholder_handler`` (first call of ``quantize``): reference;
* ``DisableLastReturnQuantTensor`` (last call of ``quantize``): attach the result;
* ``layerwise_layer_handler`` (``layerwise_quantize``): reference, then attach.

Traced ``GraphModule``s are aliased to the float model's reference. PTQ context
managers (``calibration_mode``, ``bias_correction_mode``, every ``gpxq_mode``,
``activation_equalization_mode``) mute the injector while they run: they have no
loss, and their forwards are not the user's evaluation. Hand-built ``brevitas.nn``
models are found by :class:`labelkeep_brevitas.students.HandBuiltWatcher`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from labelkeep_brevitas.students import (
    HandBuiltWatcher,
    disable_quantization,
    warn_if_frozen_once,
)
from labelkeep_plugins.zero_code.adapter_api import (
    ImportCallback,
    PatchingAdapter,
    cancel,
    when_imported,
)

if TYPE_CHECKING:
    from labelkeep_plugins.zero_code.adapter_api import InjectionHandle, Session

FRAMEWORK = "brevitas"
HAND_BUILT_WHERE = "first training forward of a hand-built brevitas.nn model (quantization off)"


class BrevitasAdapter(PatchingAdapter):
    """Snapshot before Brevitas quantizes, attach the quantized model, leave PTQ untouched."""

    name = "brevitas"
    framework = "brevitas"
    distribution = "labelkeep-brevitas"  # its pin on brevitas is the supported range
    module = "brevitas"

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[ImportCallback] = []
        self._handles: list[InjectionHandle] = []
        self._checks: list[RemovableHandle] = []
        self._muting: dict[int, contextlib.ExitStack] = {}
        self.handbuilt = HandBuiltWatcher(
            self._claim, self._ready, self._train_mode_only, self._guarded
        )

    def install(self, session: Session) -> None:
        """Patch each Brevitas module when it is (or already was) imported."""
        self._when_imported(
            "brevitas.nn.mixin.base", lambda base: self.handbuilt.install(self.patches, base)
        )
        self._when_imported("brevitas.graph.quantize", self._patch_quantize)
        self._when_imported("brevitas.graph.calibrate", self._patch_calibrate)
        self._when_imported("brevitas.graph.gpxq", self._patch_gpxq)
        self._when_imported("brevitas.graph.equalize", self._patch_equalize)

    def instrument(self, session: Session) -> None:
        try:
            super().instrument(session)
        except BaseException:
            self.uninstrument()  # strict mode: leave no half-installed patches behind
            raise

    def uninstrument(self) -> None:
        for callback in self._callbacks:
            cancel(callback)
        self._callbacks.clear()
        self.handbuilt.uninstall()
        for stack in list(self._muting.values()):
            stack.close()
        self._muting.clear()
        for check in self._checks:
            check.remove()
        self._checks.clear()
        self._handles.clear()
        super().uninstrument()

    # -- what the patches do -------------------------------------------------------------

    def reference(self, model: Any, where: str) -> None:
        """Take (or find) ``model``'s reference; a reference with quant layers runs float."""
        session = self.session
        if session is None or not isinstance(model, nn.Module):
            return
        with session.guard(self.name):
            disable_quantization(session.reference_for(model, framework=FRAMEWORK, where=where))

    def alias(self, new: Any, old: Any) -> None:
        session = self.session
        if session is None or new is old or not isinstance(new, nn.Module):
            return
        with session.guard(self.name):
            session.alias(new, old)

    def attach(self, student: Any) -> None:
        """Attach the loss to a quantized model that QAT may train next."""
        session = self.session
        if session is None or not isinstance(student, nn.Module):
            return
        with session.guard(self.name):
            self._attach(session, student)

    def _attach(self, session: Session, student: nn.Module) -> None:
        existing = session.handle_of(student)
        handle = existing if existing is not None else session.attach(student)
        self.handbuilt.release(student)
        if existing is None:
            self._handles.append(handle)
            self._checks.append(warn_if_frozen_once(student))

    def _claim(self, root: nn.Module) -> None:
        session = self.session
        if session is None or session.handle_of(root) is not None:
            return
        disable_quantization(
            session.reference_for(root, framework=FRAMEWORK, where=HAND_BUILT_WHERE)
        )
        self._attach(session, root)

    def _ready(self) -> bool:
        """Hand-built models may be claimed: instrumented, and no PTQ block is running."""
        return self.session is not None and not self._muting

    def _train_mode_only(self) -> bool:
        return self.session is None or self.session.config.train_mode_only

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        session = self.session
        if session is None:
            with contextlib.suppress(Exception):
                yield
            return
        with session.guard(self.name):
            yield

    def begin_ptq(self, manager: Any, snapshot: str | None) -> None:
        """A PTQ block starts: optionally take the reference, then mute every handle."""
        session = self.session
        if session is None:
            return
        with session.guard(self.name):
            if snapshot is not None:
                self.reference(getattr(manager, "model", None), snapshot)
            stack = contextlib.ExitStack()
            for handle in self._handles:
                if handle.attached:
                    stack.enter_context(handle.muted())
            self._muting[id(manager)] = stack

    def end_ptq(self, manager: Any) -> None:
        stack = self._muting.pop(id(manager), None)
        if stack is not None:
            stack.close()

    # -- the patches ------------------------------------------------------------------------

    def _when_imported(self, module_name: str, patcher: Callable[[ModuleType], None]) -> None:
        def callback(module: ModuleType) -> None:
            if self.session is not None:
                with self.session.guard(self.name):
                    patcher(module)

        self._callbacks.append(callback)
        when_imported(module_name, callback)

    def _patch_quantize(self, quantize: ModuleType) -> None:
        self._wrap_call(
            quantize, "symbolic_trace", "preprocess_for_quantize: before symbolic_trace"
        )
        self._wrap_call(
            quantize, "inp_placeholder_handler", "quantize: before inp_placeholder_handler"
        )
        self._wrap_call(
            quantize,
            "layerwise_layer_handler",
            "layerwise_quantize: before layerwise_layer_handler",
            attach=True,
        )
        self._subclass_transform(
            quantize,
            "TorchFunctionalToModule",
            "preprocess_for_quantize(trace_model=False): before TorchFunctionalToModule",
        )
        self._subclass_transform(quantize, "DisableLastReturnQuantTensor", None, attach=True)

    def _wrap_call(self, owner: ModuleType, name: str, where: str, *, attach: bool = False) -> None:
        """Replace the global function ``owner.name(model, ...)``: reference first, then call."""
        original = getattr(owner, name)
        adapter = self

        @functools.wraps(original)
        def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
            adapter.reference(model, where)
            result = original(model, *args, **kwargs)
            adapter.alias(result, model)
            if attach:
                adapter.attach(result)
            return result

        self.patches.patch(owner, name, wrapper)

    def _subclass_transform(
        self, owner: ModuleType, name: str, where: str | None, *, attach: bool = False
    ) -> None:
        """Replace the global graph-transform class ``owner.name`` by a subclass whose
        ``apply`` takes the reference before (``where``) or attaches after (``attach``).

        A subclass in the module's namespace reaches only the calls made from that
        module (``preprocess_for_quantize``/``quantize``), never the user's own uses.
        """
        adapter = self
        base = getattr(owner, name)

        def apply(transform: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            if where is not None:
                adapter.reference(model, where)
            result = super(subclass, transform).apply(model, *args, **kwargs)
            adapter.alias(result, model)
            if attach:
                adapter.attach(result)
            return result

        subclass = type(
            name,
            (base,),
            {
                "apply": functools.wraps(base.apply)(apply),
                "__module__": base.__module__,
                "__doc__": base.__doc__,
            },
        )
        self.patches.patch(owner, name, subclass)

    def _patch_calibrate(self, calibrate: ModuleType) -> None:
        self.patch_context(calibrate.calibration_mode)
        self.patch_context(calibrate.bias_correction_mode)

    def _patch_gpxq(self, gpxq: ModuleType) -> None:
        self.patch_context(gpxq.gpxq_mode)  # gptq_mode, gpfq_mode, magr_mode inherit it

    def _patch_equalize(self, equalize: ModuleType) -> None:
        # Activation equalization rescales weights in place: a compression step, after
        # which the float model is no longer the one the user trained.
        self.patch_context(
            equalize.activation_equalization_mode, snapshot="activation_equalization_mode.__enter__"
        )

    def patch_context(self, manager_type: type, snapshot: str | None = None) -> None:
        """Mute the injector between ``__enter__`` and ``__exit__`` of a PTQ context manager."""
        enter, leave = manager_type.__enter__, manager_type.__exit__
        adapter = self

        @functools.wraps(enter)
        def __enter__(manager: Any, *args: Any, **kwargs: Any) -> Any:
            adapter.begin_ptq(manager, snapshot)
            try:
                return enter(manager, *args, **kwargs)
            except BaseException:
                adapter.end_ptq(manager)
                raise

        @functools.wraps(leave)
        def __exit__(manager: Any, *exc_info: Any) -> Any:
            try:
                return leave(manager, *exc_info)
            finally:
                adapter.end_ptq(manager)

        self.patches.patch(manager_type, "__enter__", __enter__)
        self.patches.patch(manager_type, "__exit__", __exit__)
