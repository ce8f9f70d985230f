"""The NNI 3.x adapter: reference at first sight, one injector for NNI's training and the user's.

What is patched (all class attributes, so subclasses and users who imported the
classes before activation are reached; integration notes §1.1-1.6):

* ``Compressor.__init__``: on entry, the reference is snapshotted the first time
  a model object is seen (nothing before ``wrap_model()`` changes the model). A
  model already wrapped by a compressor labelkeep did not see gets no reference:
  a copy would carry NNI's wrappers and masks. Distillers take no reference.
* ``bind_model`` of every NNI evaluator (Torch, Lightning, Transformers,
  DeepSpeed): ``Compressor._fusion_compress`` is its only caller, right before
  ``evaluator.train``, so this is "NNI is about to train": the loss is attached
  to the bound model here.
* ``Compressor.compress``: every ``compress`` override in NNI ends in it. When it
  returns, the loss is attached (a no-op if NNI trained) so that the user's own
  fine-tuning afterwards (after ``unwrap_model`` / ``ModelSpeedup`` too) gets it.
* ``Compressor._fusion_compress``: tells ``bind_model`` which compressor drives
  the training, mutes the loss while an NNI *distiller* trains (it brings its own
  teacher loss), and warns when NNI trained but no training forward was seen.
* ``Compressor.unwrap_model`` and ``ModelSpeedup``: see mask_watch / speedup.
* ``Pruner.update_masks``: a scheduled pruner's round while the loss is attached
  tells the session that the student changed (the catch-up gate closes again).

Why one route (the host's generic hybrid injector, ``session.attach``) and not
``evaluator.patch_loss``: the patch only receives ``(loss, batch)``, so it would
have to guess the labels out of an arbitrary batch (the focal weights need them)
and cannot tell one forward's logits from another's when a step runs several.
The injector sees the labels where the logits reach ``cross_entropy``/``nll_loss``
(NNI's documented ``training_step``) and adds the terms to exactly that value,
which is then what ``backward()`` sees, whatever NNI's own ``patch_loss``
(Slim, Movement) adds on top; otherwise it falls back to the gradient route.
Because NNI-driven and user-driven training go through the same handle on the
same root module, nothing is ever added twice and nothing needs muting except a
distiller. ``unbind_model`` needs no patch: the handle must outlive it, and NNI
reverts its own patches. Evaluation forwards (``no_grad``, e.g. HF's
``prediction_step`` through ``compute_loss``) never get the loss; they feed the
agreement meter.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from torch import nn

from labelkeep_nni import notices, optimizer_check
from labelkeep_nni.mask_watch import MaskWatch
from labelkeep_nni.shims import install_shims
from labelkeep_nni.speedup import SpeedupPatch
from labelkeep_plugins.zero_code.adapter_api import (
    PatchingAdapter,
    cancel,
    unwrap_model,
    when_imported,
)

if TYPE_CHECKING:
    from labelkeep_plugins.zero_code.adapter_api import InjectionHandle, Session

SPEEDUP_MODULE = "nni.compression.speedup.model_speedup"
EVALUATORS = (
    "TorchEvaluator",
    "LightningEvaluator",
    "TransformersEvaluator",
    "DeepspeedTorchEvaluator",
)
_driver: ContextVar[Any] = ContextVar("labelkeep_nni_driver", default=None)


def is_nni_wrapped(model: nn.Module) -> bool:
    """True when an NNI compressor's wrappers are in the model (it is no longer pristine)."""
    return any(name.rsplit(".", 1)[-1] == "_nni_wrapper" for name, _ in model.named_modules())


def _is_distiller(compressor: Any) -> bool:
    return getattr(compressor, "mode", None) == "distillation"


class NNIAdapter(PatchingAdapter):
    """Makes NNI's recovery training, and the user's after ``compress()``, keep the labels."""

    name = "nni"
    framework = "nni"
    distribution = "labelkeep-nni"  # its pin on nni is the supported range
    module = "nni.compression"

    def __init__(self) -> None:
        super().__init__()
        self.masks = MaskWatch(self.notices.warn)
        self.optimizers = optimizer_check.OptimizerCheck()
        self.shims: list[str] = []
        self._speedup = SpeedupPatch(self)
        self._on_speedup_import: Callable[[Any], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def install(self, session: Session) -> None:
        from nni.compression.base import compressor as compressor_module
        from nni.compression.utils import evaluator as evaluator_module

        compressor = compressor_module.Compressor
        self._wrap(compressor, "__init__", self._compressor_init)
        self._wrap(compressor, "compress", self._compress)
        self._wrap(compressor, "_fusion_compress", self._fusion_compress)
        self._wrap(compressor, "unwrap_model", self._unwrap_model)
        self._wrap(compressor_module.Pruner, "update_masks", self._update_masks)
        for name in EVALUATORS:
            evaluator_class = getattr(evaluator_module, name, None)
            if evaluator_class is not None and "bind_model" in evaluator_class.__dict__:
                self._wrap(evaluator_class, "bind_model", self._bind_model)
        self.shims = install_shims(self.patches, evaluator_module)

        def on_speedup_import(module: Any) -> None:
            with self.guard():
                self._speedup.install(module)

        self._on_speedup_import = on_speedup_import
        when_imported(SPEEDUP_MODULE, on_speedup_import)

    def uninstrument(self) -> None:
        if self._on_speedup_import is not None:
            cancel(self._on_speedup_import)
            self._on_speedup_import = None
        self.masks.forget_all()
        super().uninstrument()

    def guard(self) -> AbstractContextManager[None]:
        """Contain a failure of the adapter's own code (see ``Session.guard``)."""
        return self.session.guard(self.name) if self.session is not None else nullcontext()

    def handle_of(self, model: Any) -> InjectionHandle | None:
        if self.session is None or not isinstance(model, nn.Module):
            return None
        return self.session.handle_of(model)

    def _wrap(self, owner: type, name: str, make: Callable[[Callable[..., Any]], Any]) -> None:
        original = getattr(owner, name)
        replacement = make(original)
        replacement.__wrapped__ = original
        self.patches.patch(owner, name, replacement)

    # -- Compressor ------------------------------------------------------------------------

    def _compressor_init(self, original: Callable[..., None]) -> Callable[..., None]:
        def __init__(compressor: Any, *args: Any, **kwargs: Any) -> None:
            if self.session is not None:
                with self.guard():
                    model = args[0] if args else kwargs.get("model")
                    evaluator = args[2] if len(args) > 2 else kwargs.get("evaluator")
                    self._first_sight(compressor, model, evaluator)
            original(compressor, *args, **kwargs)

        return __init__

    def _first_sight(self, compressor: Any, model: Any, evaluator: Any) -> None:
        session = self.session
        if session is None or not isinstance(model, nn.Module):
            return
        name = type(compressor).__name__
        self.masks.forget(model)
        self.optimizers.before_init(name, model, evaluator)
        if _is_distiller(compressor) or session.reference_of(model) is not None:
            return
        if is_nni_wrapped(unwrap_model(model)):
            self.notices.warn(f"wrapped:{id(model)}", notices.already_wrapped(name))
            return
        session.reference_for(model, framework="nni", where=f"{name}.__init__")

    def _compress(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def compress(compressor: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(compressor, *args, **kwargs)
            if self.session is not None:
                with self.guard():
                    self._after_compress(compressor)
            return result

        return compress

    def _after_compress(self, compressor: Any) -> None:
        session = self.session
        model = getattr(compressor, "bound_model", None)
        if session is None or not isinstance(model, nn.Module):
            return
        if getattr(compressor, "mode", None) == "pruning" and hasattr(compressor, "get_masks"):
            self.masks.remember(model, compressor.get_masks())
        if session.reference_of(model) is not None:
            session.attach(model)

    def _fusion_compress(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _fusion_compress(compressor: Any, *args: Any, **kwargs: Any) -> Any:
            model = getattr(compressor, "bound_model", None)
            handle = self.handle_of(model)
            before = handle.stats.training_forwards if handle is not None else 0
            mute = handle is not None and _is_distiller(compressor)
            token = _driver.set(compressor)
            try:
                with handle.muted() if mute and handle is not None else nullcontext():
                    result = original(compressor, *args, **kwargs)
            finally:
                _driver.reset(token)
            if self.session is not None:
                with self.guard():
                    self._after_training(compressor, model, before)
            return result

        return _fusion_compress

    def _after_training(self, compressor: Any, model: Any, before: int) -> None:
        handle = self.handle_of(model)
        if handle is None or _is_distiller(compressor) or handle.stats.training_forwards > before:
            return
        name = type(compressor).__name__
        evaluator = getattr(compressor, "evaluator", None)
        self.notices.warn(f"no-forward:{name}", notices.no_training_forward(name, evaluator, model))

    def _unwrap_model(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def unwrap_model(compressor: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(compressor, *args, **kwargs)
            if self.session is not None:
                with self.guard():
                    model = getattr(compressor, "bound_model", None)
                    if getattr(compressor, "mode", None) == "pruning" and isinstance(
                        model, nn.Module
                    ):
                        self.masks.arm(model)
            return result

        return unwrap_model

    def _update_masks(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def update_masks(compressor: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(compressor, *args, **kwargs)
            model = getattr(compressor, "bound_model", None)
            if self.session is not None and self.handle_of(model) is not None:
                with self.guard():  # a pruning round mid-training: the tuner starts over
                    where = f"nni: {type(compressor).__name__}.update_masks"
                    self.session.student_changed(model, where)
            return result

        return update_masks

    # -- Evaluators ------------------------------------------------------------------------

    def _bind_model(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def bind_model(evaluator: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(evaluator, model, *args, **kwargs)
            if self.session is not None:
                with self.guard():
                    self._after_bind(evaluator, model)
            return result

        return bind_model

    def _after_bind(self, evaluator: Any, model: Any) -> None:
        session = self.session
        if session is None or not isinstance(model, nn.Module) or _is_distiller(_driver.get()):
            return
        reference = session.reference_of(model)
        if reference is None:
            self.notices.warn(f"no-reference:{id(model)}", notices.no_reference(evaluator, model))
            return
        session.attach(model)
        missing = self.optimizers.after_bind(evaluator, unwrap_model(model), reference)
        if missing is not None:
            compressor_name, names = missing
            self.notices.warn(
                f"optimizer:{id(evaluator)}",
                optimizer_check.message(compressor_name, evaluator, names),
            )
