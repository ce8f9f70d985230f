"""The frozen reference: a deep copy of the model taken before compression changes it.

The copy is made without the student's hooks (a hook's closure could drag its
owner into the copy or fire on it), is put in eval mode with ``requires_grad``
off, shares no storage with the student, and is never registered under the
student (where ``student.train()`` or an optimizer would reach it).
"""

from __future__ import annotations

import copy
import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune

from labelkeep_plugins.errors import SnapshotError

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)

_snapshots: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module behind DDP/DataParallel and ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None and isinstance(
            model, nn.parallel.DistributedDataParallel | nn.DataParallel
        ):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def snapshot_reference(model: nn.Module) -> nn.Module:
    """Return a frozen, independent copy of ``model`` to serve as the reference (teacher)."""
    if not isinstance(model, nn.Module):
        raise SnapshotError(f"the reference must be a torch.nn.Module, got {type(model).__name__}")
    source = unwrap_model(model)
    with torch.no_grad(), _without_hooks(source):
        try:
            reference = copy.deepcopy(source, _detached_non_leaf_tensors(source))
        except Exception as exc:
            raise SnapshotError(_copy_failure_message(source, exc)) from exc
    reference.eval()
    reference.requires_grad_(False)
    shared = _shared_tensor_names(source, reference)
    if shared:
        raise SnapshotError(
            f"the reference copy shares storage with the model at {shared[:5]}; "
            "the model holds tensors deepcopy cannot separate"
        )
    _snapshots.add(reference)
    return reference


def is_snapshot(module: nn.Module) -> bool:
    """True for a module made by :func:`snapshot_reference` (safe to use as-is)."""
    return module in _snapshots


def as_reference(module: nn.Module) -> nn.Module:
    """``module`` itself if it is already a snapshot, else a fresh snapshot of it."""
    return module if is_snapshot(module) else snapshot_reference(module)


def move_to(reference: nn.Module, device: torch.device) -> nn.Module:
    """Move the reference to ``device`` (in place; it is ours) if it is not there yet."""
    tensor: torch.Tensor | None = next(iter(reference.parameters()), None)
    if tensor is None:
        tensor = next(iter(reference.buffers()), None)
    if tensor is not None and tensor.device != device:
        reference.to(device)
    return reference


def checksum(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict(keep_vars=False).items():
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def _without_hooks(model: nn.Module) -> Iterator[None]:
    """Swap out the hooks during the copy, keeping those that define the function (pruning)."""
    saved: list[tuple[nn.Module, str, object]] = []
    try:
        for module in model.modules():
            for attribute in _HOOK_DICTS:
                if attribute in module.__dict__:
                    hooks = module.__dict__[attribute]
                    saved.append((module, attribute, hooks))
                    module.__dict__[attribute] = OrderedDict(
                        (key, hook)
                        for key, hook in hooks.items()
                        if isinstance(hook, prune.BasePruningMethod)
                    )
        yield
    finally:
        for module, attribute, hooks in reversed(saved):
            module.__dict__[attribute] = hooks


def _detached_non_leaf_tensors(model: nn.Module) -> dict[int, object]:
    """A deepcopy memo for tensors held as plain attributes that autograd produced.

    ``torch.nn.utils.prune`` (and old-style weight norm) keep the computed weight as
    such an attribute, which ``deepcopy`` refuses; the copy gets a detached clone
    (its pruning hook recomputes it on the first forward anyway).
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return memo


def _copy_failure_message(model: nn.Module, exc: Exception) -> str:
    culprit = _deepest_uncopyable(model)
    where = f"module {culprit!r}" if culprit else f"{type(model).__name__}"
    return (
        f"cannot copy the model to make a reference: {where} failed to deepcopy "
        f"({type(exc).__name__}: {exc}). Make it deep-copyable (e.g. drop open files, locks or "
        f"lambdas held as attributes), or pass a reference model explicitly"
    )


def _deepest_uncopyable(model: nn.Module) -> str | None:
    failing: str | None = None
    for name, module in model.named_modules():
        try:
            copy.deepcopy(module)
        except Exception:
            failing = name or type(model).__name__
    return failing


def _shared_tensor_names(source: nn.Module, reference: nn.Module) -> list[str]:
    def pointers(module: nn.Module) -> dict[int, str]:
        found: dict[int, str] = {}
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.numel() and tensor.device.type != "meta":
                found[tensor.untyped_storage().data_ptr()] = name
        return found

    source_pointers = pointers(source)
    return [name for ptr, name in pointers(reference).items() if ptr in source_pointers]
