"""Module hooks that survive ``copy.deepcopy`` and pickling of the model they sit on.

torch-pruning users copy and save the pruned model: ``tp.utils.count_ops_and_params``
deep-copies it (the README calls it right after ``pruner.step()``), and its docs save
whole models with ``torch.save(model)``. Module hooks are copied and pickled with the
model, and a hook that is a bound method drags its owner along; labelkeep's owners
hold the plugin manager, which cannot be copied (``TypeError: cannot pickle 'module'
object``). Wrapped in :class:`CopySafeHook`, a copy or an unpickled model gets
:func:`inert_hook` instead: copies never run the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


def inert_hook(*args: Any, **kwargs: Any) -> None:
    """What a copied or unpickled model holds in place of a labelkeep hook: nothing to do."""
    return None


def _inert() -> Callable[..., None]:
    return inert_hook


class CopySafeHook:
    """Calls ``target``; its copies and pickles are :func:`inert_hook`."""

    __slots__ = ("target",)

    def __init__(self, target: Callable[..., Any]) -> None:
        self.target = target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.target(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return inert_hook

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_inert, ())


def make_copy_safe(module: nn.Module, owner: object) -> int:
    """Wrap the forward hooks on ``module`` that are bound methods of ``owner``; return how many.

    The hook keeps its id, so ``RemovableHandle.remove()`` (and ``with_kwargs``) work as before.
    """
    wrapped = 0
    hooks = module._forward_hooks
    for key, hook in list(hooks.items()):
        if getattr(hook, "__self__", None) is owner:
            hooks[key] = CopySafeHook(hook)
            wrapped += 1
    return wrapped
