"""``ModelSpeedup``: NNI's concrete tracer on recent torch, and keeping the loss on the model.

On torch 2.13 NNI 3.0's concrete tracer fails before it looks at the model
(``AttributeError: 'NoneType' object has no attribute 'startswith'`` at
``concrete_tracer.py:958``: a torch callable whose ``__module__`` is None). NNI
documents ``graph_module=`` as the way around its tracer; where the tracer is
broken and the user passed no graph, the adapter passes
``torch.fx.symbolic_trace(model)`` and says so in one line. If torch.fx cannot
trace the model either, NNI's own error surfaces after a line that explains it.

``speedup_model()`` replaces submodules of the same root object (verified:
it returns ``self.bound_model``), so the loss attached to the root stays; a
different returned object would get the old one's reference by alias. The
attachment is muted while ModelSpeedup runs its dummy inputs through the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from labelkeep_nni.mask_watch import MaskWatch
    from labelkeep_plugins.zero_code.adapter_api import (
        InjectionHandle,
        Notices,
        PatchSet,
        Session,
    )


class SpeedupHost(Protocol):
    """What the patch needs of its adapter (the NNI adapter), named so as not to import it."""

    patches: PatchSet
    notices: Notices
    masks: MaskWatch
    session: Session | None

    def guard(self) -> AbstractContextManager[None]: ...

    def handle_of(self, model: Any) -> InjectionHandle | None: ...


_PROBE_INPUT = (torch.zeros(1, 2),)


def concrete_tracer_failure() -> str | None:
    """Why NNI's concrete tracer fails on a trivial model here, or None if it works."""
    from nni.common.concrete_trace_utils import concrete_trace

    try:
        concrete_trace(nn.Sequential(nn.Linear(2, 2)), _PROBE_INPUT)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class SpeedupPatch:
    """Patches ``ModelSpeedup.__init__`` and ``speedup_model`` for one adapter."""

    def __init__(self, adapter: SpeedupHost) -> None:
        self.adapter = adapter
        self._tracer_failure: str | bool | None = False  # False: not probed yet

    def install(self, module: Any) -> None:
        speedup_class = module.ModelSpeedup
        patches = self.adapter.patches
        original_init = patches.patch(speedup_class, "__init__", self._init(speedup_class))
        self._original_init = original_init
        self._signature = inspect.signature(original_init)
        original_run = speedup_class.speedup_model
        patches.patch(speedup_class, "speedup_model", self._speedup_model(original_run))

    def tracer_failure(self) -> str | None:
        if self._tracer_failure is False:
            self._tracer_failure = concrete_tracer_failure()
        return self._tracer_failure  # type: ignore[return-value]

    def _init(self, speedup_class: type) -> Callable[..., None]:
        patch = self

        def __init__(speedup: Any, *args: Any, **kwargs: Any) -> None:
            model = args[0] if args else kwargs.get("model")
            with patch.adapter.guard():
                args, kwargs = patch._with_graph_module(speedup, args, kwargs)
            with patch._muted(model):
                patch._original_init(speedup, *args, **kwargs)

        __init__.__wrapped__ = speedup_class.__init__  # type: ignore[attr-defined]
        return __init__

    def _with_graph_module(
        self,
        speedup: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments with ``graph_module=`` filled in where NNI's own tracer cannot work."""
        bound = self._signature.bind(speedup, *args, **kwargs)
        model = bound.arguments.get("model")
        if bound.arguments.get("graph_module") is not None or not isinstance(model, nn.Module):
            return args, kwargs
        failure = self.tracer_failure()
        if failure is None:
            return args, kwargs
        version = torch.__version__
        try:
            graph_module = torch.fx.symbolic_trace(model)
        except Exception as exc:
            self.adapter.notices.warn(
                "speedup-fx-failed",
                (
                    f"ModelSpeedup: NNI's concrete tracer does not work with torch {version} "
                    f"({failure}), and torch.fx.symbolic_trace cannot trace "
                    f"{type(model).__name__} either ({type(exc).__name__}: {exc}); NNI's error "
                    f"follows. Trace the model yourself (torch.fx with concrete_args or leaf "
                    f"modules) and pass it as ModelSpeedup(..., graph_module=...)"
                ),
            )
            return args, kwargs
        self.adapter.notices.warn(
            "speedup-fx",
            (
                f"ModelSpeedup: NNI's concrete tracer does not work with torch {version} "
                f"({failure}); labelkeep passed graph_module=torch.fx.symbolic_trace(model), NNI's "
                f"documented alternative. Pass graph_module= yourself to make this explicit"
            ),
        )
        bound.arguments["graph_module"] = graph_module
        return bound.args[1:], bound.kwargs

    def _speedup_model(self, original: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        patch = self

        def speedup_model(speedup: Any) -> nn.Module:
            model = getattr(speedup, "bound_model", None)
            with patch.adapter.guard():
                if isinstance(model, nn.Module):
                    patch.adapter.masks.forget(model)
            with patch._muted(model):
                result = original(speedup)
            with patch.adapter.guard():
                patch._keep_reference(model, result)
            return result

        speedup_model.__wrapped__ = original  # type: ignore[attr-defined]
        return speedup_model

    def _keep_reference(self, model: Any, result: Any) -> None:
        if result is model or not isinstance(model, nn.Module) or not isinstance(result, nn.Module):
            return
        session = self.adapter.session
        if session is not None and session.reference_of(model) is not None:
            session.alias(result, model)
            session.attach(result)

    @contextmanager
    def _muted(self, model: Any) -> Iterator[None]:
        handle = self.adapter.handle_of(model)
        with handle.muted() if handle is not None else nullcontext():
            yield
