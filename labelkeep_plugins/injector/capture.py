"""What the injector remembers about one student forward, found again by tensor identity."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class CapturedForward:
    """One student forward: its logits (weakly), their detached values and the reference's."""

    logits_ref: weakref.ref[torch.Tensor]
    student: torch.Tensor
    reference: torch.Tensor
    training: bool
    pass_id: int = 0
    handled: bool = False
    targets: torch.Tensor | None = field(default=None)


class ForwardRegistry:
    """Captured forwards keyed by the identity of their logits tensor.

    An entry leaves when its logits tensor is freed; ``on_release`` sees it then
    (evaluation entries are counted at that point if no loss claimed them).
    """

    def __init__(self, on_release: Callable[[CapturedForward], None]) -> None:
        self._entries: dict[int, CapturedForward] = {}
        self._on_release = on_release
        # The latest training forward's logits, held: in nll_loss(log_softmax(model(x)), y)
        # the script drops them before nll_loss runs, and the terms need them. Held until the
        # next training forward (their graph's buffers go at the user's backward anyway).
        self._latest_training: tuple[CapturedForward, torch.Tensor] | None = None

    def add(
        self, logits: torch.Tensor, reference: torch.Tensor, training: bool, pass_id: int = 0
    ) -> CapturedForward:
        key = id(logits)
        self._release(key)

        def released(_ref: weakref.ref[torch.Tensor]) -> None:
            self._release(key)

        ref = weakref.ref(logits, released)
        entry = CapturedForward(ref, logits.detach(), reference, training, pass_id)
        self._entries[key] = entry
        if training:
            self._latest_training = (entry, logits) if logits.grad_fn is not None else None
        return entry

    def find(self, tensor: torch.Tensor) -> CapturedForward | None:
        entry = self._entries.get(id(tensor))
        if entry is None or entry.logits_ref() is not tensor:
            return None
        return entry

    def find_through_log_softmax(
        self, tensor: torch.Tensor
    ) -> tuple[CapturedForward, torch.Tensor] | None:
        """The forward whose logits ``tensor`` is the ``log_softmax`` of, over the classes.

        ``nll_loss(log_softmax(model(x)), y)`` is cross-entropy written out: with a graph,
        the log_softmax node's input is the captured logits' node; without one (evaluation
        under ``no_grad``), its values equal the captured logits' log_softmax exactly.
        Returns the forward and its logits (the terms are taken on them).
        """
        if tensor.dim() != 2:
            return None
        node = tensor.grad_fn
        if node is not None:
            if type(node).__name__ != "LogSoftmaxBackward0" or not _over_classes(node):
                return None
            parent = node.next_functions[0][0]
            for entry, logits in self._live():
                if logits.grad_fn is parent:
                    return entry, logits
            return None
        for entry, logits in self._live():
            same_shape = logits.shape == tensor.shape and logits.grad_fn is None
            if same_shape and torch.equal(torch.log_softmax(entry.student, dim=1), tensor):
                return entry, logits
        return None

    def _live(self) -> list[tuple[CapturedForward, torch.Tensor]]:
        """Each entry with its logits while they live; the latest training one's are held."""
        pairs = [(entry, entry.logits_ref()) for entry in self._entries.values()]
        live = [(entry, logits) for entry, logits in pairs if logits is not None]
        return live if self._latest_training is None else [*live, self._latest_training]

    def flush(self, *, evaluation_only: bool = False) -> None:
        """Release entries now (all when detaching; evaluation ones when the meter is read)."""
        if not evaluation_only:
            self._latest_training = None
        for key, entry in list(self._entries.items()):
            if not (evaluation_only and entry.training):
                self._release(key)

    def _release(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._on_release(entry)


def _over_classes(node: torch.autograd.graph.Node) -> bool:
    """The log_softmax ran over dim 1 of a 2-D input (-1 is saved as 2**64 - 1)."""
    dim = getattr(node, "_saved_dim", None)
    return dim in (1, -1, 2**64 - 1)
