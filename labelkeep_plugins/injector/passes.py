"""Where one evaluation pass ends and the next begins.

Where a pass starts. An evaluation forward starts a new pass when, since the
previous forward of the student:

1. a training forward ran;
2. a ``torch.utils.data.DataLoader`` iterator was created (``for batch in loader``);
3. ``student.train()``/``student.eval()`` was called (directly or through a module
   holding it) after at least two forwards of the pass ran without such a call, so a
   helper that calls ``model.eval()`` before every batch does not split a pass.

A pass not begun by a new DataLoader iterator (a script slicing tensors or looping
over a list of batches) is taken to yield batches of one size with a smaller last one:

4. the forward after a batch smaller than the pass's first starts a new pass, and so
   does a batch larger than the pass's first;
5. a batch equal to the pass's first batch (same shape and dtype, a few values and
   the sums of its first, middle and last rows), after other batches, starts a new
   pass over the same data. The same batch evaluated several times in a row with no
   ``eval()``/``train()`` call between (a latency loop) stays one pass: its rates are one
   pass's, its counts grow. With such a call between (a one-batch test set evaluated twice,
   each time after ``model.eval()``), each evaluation is a pass.

Rules 4 and 5 are left out of DataLoader passes: rule 2 already marks each of them,
and a batch sampler's batches may vary in size. Rule 5 copies 15 numbers to the host
right after the hook's existing synchronisation (the reference's finiteness check).

What cannot be told apart is said in :meth:`PassMeters.ambiguities` (the report's
``passes_ambiguous``) rather than guessed silently: a partial batch followed by one
of the same size (the end of a pass, or the first batch of the next?), and a mode
call after a single forward followed by forwards without one (a one-batch pass and
another, or one pass with a per-batch ``eval()``?). Some merges leave no trace and
count as one pass: passes over different tensors (or a reshuffled copy) in batches of
one size with no DataLoader and no ``eval()`` call between them, a DataLoader subclass
whose ``__iter__`` bypasses DataLoader's, a model whose ``train()`` bypasses Module's.
``next(iter(loader))`` before every batch makes each batch a pass of its own.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from labelkeep_plugins.patching import PatchSet

MODE_CALL_RUN = 2  # forwards without a mode call before one counts as a pass boundary
_FINGERPRINT_VALUES = 4  # values read from each of the first, middle and last rows

AMBIGUOUS_TAIL = (
    "a partial batch was followed by a batch of the same size, so it may have been the "
    "first batch of the next pass rather than the last of its own; the boundary was put "
    "after it"
)
AMBIGUOUS_MODE_CALL = (
    "eval()/train() was called after a single evaluation forward and the next forwards ran "
    "without such calls: a one-batch pass followed by another cannot be told from one pass "
    "with a per-batch eval() call, and they were counted as one pass"
)

Fingerprint = tuple[Any, ...]


class EvaluationBatch:
    """One evaluation forward: its batch size, and its input's fingerprint when asked."""

    def __init__(
        self, size: int, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> None:
        self.size = size
        self._inputs = (tuple(args), dict(kwargs or {}))
        self._fingerprint: Fingerprint | None = None

    def fingerprint(self) -> Fingerprint | None:
        """Read lazily: only passes not fed by a DataLoader need it (it copies a few values)."""
        if self._fingerprint is None:
            self._fingerprint = input_fingerprint(*self._inputs)
        return self._fingerprint


def input_fingerprint(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Fingerprint | None:
    """Shape, dtype, a few values and the sum of the first, middle and last rows of the input.

    Cheap on purpose (three rows read, 15 numbers copied): it only has to tell the first
    batch of a pass from the other batches of the same script. None without a tensor input.
    """
    tensor = next(
        (v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim()), None
    )
    if tensor is None or tensor.shape[0] == 0 or tensor.layout != torch.strided:
        return None
    if tensor.is_complex():
        return None
    rows = tensor.detach()
    last = rows.shape[0] - 1
    step = max(1, rows[0].numel() // _FINGERPRINT_VALUES)
    try:  # quantized, meta or other unusual tensors: no fingerprint, so no rule 5
        picked = torch.stack([rows[0], rows[last // 2], rows[last]]).reshape(3, -1)
        sums = picked.sum(dim=1, keepdim=True)  # padded token ids agree on the strided values
        values = torch.cat([picked[:, ::step][:, :_FINGERPRINT_VALUES], sums], dim=1)
        numbers = values.double().cpu().tolist()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return (tuple(tensor.shape), tensor.dtype, numbers)


@dataclass
class _OpenPass:
    """What the current pass looked like so far, enough to see where it ends."""

    loader_fed: bool
    first_size: int | None
    fingerprint: Fingerprint | None
    tail: int | None = None  # size of the partial batch that closed it
    moved_on: bool = False  # a batch other than the first has been seen
    run: int = 0  # evaluation forwards since the last eval()/train() call


class PassBoundaries:
    """Numbers the evaluation passes by the rules of the module docstring."""

    def __init__(self) -> None:
        self.passes = 0
        self._open: _OpenPass | None = None
        self._loaders_seen = loader_iterators()
        self._mode_call = False  # a mode call after a run of MODE_CALL_RUN forwards
        self._suspect = False  # a mode call after a run of one forward
        self.ambiguous: dict[str, list[int]] = {}  # message -> [times, latest pass]
        self._watching: int | None = None  # id() of the student watched

    def watch(self, student: nn.Module) -> None:
        """Hear ``student``'s eval()/train() calls and DataLoader iterators (undo: unwatch)."""
        self.unwatch()
        _acquire()
        self._watching = id(student)
        _watched[self._watching] = (weakref.ref(student), self)

    def unwatch(self) -> None:
        """Stop hearing them; the patches go when the last watcher leaves."""
        if self._watching is None:
            return
        if _watched.get(self._watching, (None, None))[1] is self:
            del _watched[self._watching]
        self._watching = None
        _release()

    def training(self) -> None:
        """A training forward ends the open pass."""
        self._open, self._mode_call, self._suspect = None, False, False
        self._loaders_seen = loader_iterators()

    def mode_called(self) -> None:
        """``student.train()``/``eval()`` ran: a boundary after a run of two forwards without."""
        open_pass = self._open
        if open_pass is None:
            return
        if open_pass.run >= MODE_CALL_RUN:
            self._mode_call = True
        elif open_pass.run == 1:
            self._suspect = True
        open_pass.run = 0

    def evaluation(self, batch: EvaluationBatch | None) -> int:
        """The pass number of an evaluation forward now starting."""
        new_loader = self._loaders_seen != (seen := loader_iterators())
        self._loaders_seen = seen
        open_pass = self._open
        if open_pass is None or self._starts_pass(open_pass, batch, new_loader):
            open_pass = self._begin(batch, new_loader)
        open_pass.run += 1
        if self._suspect and open_pass.run >= MODE_CALL_RUN:
            self._suspect = False
            self._note(AMBIGUOUS_MODE_CALL)
        first_size = open_pass.first_size
        if batch is not None and first_size is not None and not open_pass.loader_fed:
            open_pass.tail = batch.size if batch.size < first_size else None
        return self.passes

    def _starts_pass(
        self, open_pass: _OpenPass, batch: EvaluationBatch | None, new_loader: bool
    ) -> bool:
        """Rules 2-5 of the module docstring (rule 1 is :meth:`training`)."""
        if new_loader or self._mode_call:
            return True
        if open_pass.loader_fed or batch is None or open_pass.first_size is None:
            return False
        if open_pass.tail is not None:
            if batch.size == open_pass.tail:
                self._note(AMBIGUOUS_TAIL, self.passes + 1)
            return True
        if batch.size != open_pass.first_size:
            return batch.size > open_pass.first_size
        if open_pass.fingerprint is None:
            return False
        if batch.fingerprint() != open_pass.fingerprint:
            open_pass.moved_on = True
            return False
        # The same batch again straight away is a new pass only after an eval()/train() call
        # (a script evaluating a one-batch test set twice), not in a latency loop.
        return open_pass.moved_on or open_pass.run == 0

    def _begin(self, batch: EvaluationBatch | None, loader_fed: bool) -> _OpenPass:
        self.passes += 1
        self._mode_call = self._suspect = False
        size = None if batch is None else batch.size
        fingerprint = None if batch is None or loader_fed else batch.fingerprint()
        self._open = _OpenPass(loader_fed, size, fingerprint)
        return self._open

    def _note(self, message: str, pass_id: int | None = None) -> None:
        times = self.ambiguous.setdefault(message, [0, 0])
        times[0] += 1
        times[1] = self.passes if pass_id is None else pass_id


# --- process-wide signals: DataLoader iterators and mode calls -------------------------------
# Patched on the classes while a student is watched (reference-counted, undone by identity).
# Keyed by id() with a weak reference, since a module class may define __eq__ without __hash__.

_lock = threading.Lock()
_users = 0
_patches = PatchSet("evaluation pass boundaries")
_iterators = 0  # DataLoader iterators created while watching
_watched: dict[int, tuple[weakref.ref[nn.Module], PassBoundaries]] = {}


def loader_iterators() -> int:
    """How many DataLoader iterators were created while a student was watched."""
    return _iterators


def _acquire() -> None:
    global _users
    with _lock:
        _users += 1
        if _users == 1:
            _patches.patch(DataLoader, "__iter__", _counting_iter(DataLoader.__iter__))
            _patches.patch(nn.Module, "train", _heard_train(nn.Module.train))


def _release() -> None:
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0:
            _patches.undo()


def _counting_iter(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __iter__(self: DataLoader[Any]) -> Any:
        global _iterators
        _iterators += 1
        return original(self)

    return __iter__


def _heard_train(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def train(self: nn.Module, mode: bool = True) -> Any:
        ref, boundaries = _watched.get(id(self), (None, None))
        if boundaries is not None and ref is not None and ref() is self:
            boundaries.mode_called()
        return original(self, mode)

    return train
