"""The phase of one pruned model: importance estimation (loss held back) or recovery.

torch-pruning's gradient-based importances (Taylor, Hessian, OBDC) read ``.grad``
when ``step()`` runs, and the regularising pruners steer sparse training through
``regularize()`` before it. If labelkeep's loss were active then, it would change
which channels are removed. By default it is held back (the injector is muted)
from the pruner's construction until the model has been pruned; then the hold is
released and the user's fine-tuning trains against the loss.

torch-pruning's tracer also leaves the model in eval mode, so a user who forgets
``model.train()`` fine-tunes with frozen batch-norm statistics, and labelkeep reads
those forwards as evaluation. :class:`EvalModeWatch` hears the injector's first
backward through an eval-mode forward after pruning and names that cause once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from labelkeep_plugins.zero_code.adapter_api import InjectionHandle

Guard = Callable[[], AbstractContextManager[None]]

EVAL_MODE_MESSAGE = (
    "the pruned model is being trained in eval mode (torch-pruning's tracer calls model.eval() "
    "when a pruner is built, DependencyGraph._trace, and never restores the mode; an evaluation "
    "function that calls model.eval() does the same). Batch-norm statistics stay frozen, and "
    "labelkeep reads eval-mode forwards as evaluation, so these steps get no label-preserving "
    "loss and count in the agreement figures. Call model.train() before each training epoch."
)


class EvalModeWatch:
    """Say once, mid-run, why a backward ran through an eval-mode forward after pruning.

    The injector already counts such backwards (the exit notice gives their number and
    the fix); the watch subscribes to them on the handle to name torch-pruning's own
    cause at the first one. It ends without a word once a training step was seen in
    train mode, and follows the handle when the model is attached again.
    """

    def __init__(self, handle: InjectionHandle, warn: Callable[[str], None], guard: Guard) -> None:
        self._warn = warn
        self._guard = guard
        self.done = False
        self._handle: InjectionHandle | None = None
        self._trained = 0  # the handle's training forwards when the watch started on it
        self._unsubscribe: Callable[[], None] = lambda: None
        self.follow(handle)

    def follow(self, handle: InjectionHandle) -> None:
        """Watch ``handle`` (a new attachment of the same model) instead of the old one."""
        self._unsubscribe()
        if self.done or self._trained_since_start():
            self.remove()  # the old handle already saw a train-mode step: nothing to say
            return
        self._handle = handle
        self._trained = handle.stats.training_forwards
        self._unsubscribe = handle.on_eval_mode_backward(self._on_backward)

    def remove(self) -> None:
        self.done = True
        self._unsubscribe()

    def _trained_since_start(self) -> bool:
        handle = self._handle
        return handle is not None and handle.stats.training_forwards > self._trained

    def _on_backward(self) -> None:
        with self._guard():
            trained = self._trained_since_start()
            self.remove()
            if not trained:
                self._warn(EVAL_MODE_MESSAGE)


class StudentPhase:
    """Holds the loss back while importance is estimated; opens it once the model is pruned."""

    def __init__(
        self, handle: InjectionHandle, *, warn: Callable[[str], None], guard: Guard
    ) -> None:
        self.handle = handle
        self._warn = warn
        self._guard = guard
        self._hold: AbstractContextManager[None] | None = None
        self._watch: EvalModeWatch | None = None
        self.pruned = False

    @property
    def holding(self) -> bool:
        """True while the loss is held back (importance estimation / sparse training)."""
        return self._hold is not None

    def adopt(self, handle: InjectionHandle) -> None:
        """Follow a new handle (the old one was detached); a hold moves with it."""
        if handle is self.handle:
            return
        held = self.holding
        self.release()
        self.handle = handle
        if self._watch is not None:
            self._watch.follow(handle)
        if held:
            self.hold()

    def hold(self) -> None:
        """Mute the loss until the model is pruned (a new pruner starts a new hold)."""
        if self._hold is None:
            hold = self.handle.muted()
            hold.__enter__()
            self._hold = hold

    def release(self) -> None:
        if self._hold is not None:
            hold, self._hold = self._hold, None
            hold.__exit__(None, None, None)

    def open(self) -> None:
        """The model was pruned: let the loss act and watch the first recovery steps."""
        self.release()
        self.pruned = True
        if self._watch is None:
            self._watch = EvalModeWatch(self.handle, self._warn, self._guard)

    def close(self) -> None:
        """Release the hold and remove the watch (at uninstrument)."""
        self.release()
        if self._watch is not None:
            self._watch.remove()
