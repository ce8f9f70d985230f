"""Attach the label-preserving loss to a student whose training loop labelkeep does not own.

A forward hook on the student runs the reference on the same inputs. For a
training forward the extra terms then enter by one of two paths:

* loss value: the logits reach ``cross_entropy``/``nll_loss`` (module or functional),
  and the terms are added to that call's value (exact under any later arithmetic);
* gradient: otherwise a tensor hook on the logits adds the terms' gradient, scaled
  by the live GradScaler scale, and scales the user's gradient by the ``ce`` weight.

Evaluation forwards (eval mode or no grad) feed the agreement meter instead. The ``fm``
term needs two more forwards on a mixed copy of the batch and a loss value to add to: see
:mod:`labelkeep_plugins.injector.function_matching`.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from labelkeep_plugins.budget import PassCount
from labelkeep_plugins.config import FocalConfig, LogitsSelector, LossConfig
from labelkeep_plugins.errors import LabelkeepError
from labelkeep_plugins.injector import criterion, scaler
from labelkeep_plugins.injector.capture import CapturedForward, ForwardRegistry
from labelkeep_plugins.injector.evaluation import EvaluationBatch, PassMeters
from labelkeep_plugins.injector.forward_hook import ForwardHook
from labelkeep_plugins.injector.function_matching import FunctionMatching, held_running_stats
from labelkeep_plugins.injector.listener import EVALUATION_BATCH, TRAINING_STEP, Events
from labelkeep_plugins.loss.composer import LossComposer, check_pair
from labelkeep_plugins.loss.labels import class_labels
from labelkeep_plugins.loss.logits import as_logits
from labelkeep_plugins.loss.terms import FUNCTION_MATCHING_TERM, GROUND_TRUTH_TERM
from labelkeep_plugins.metrics import AgreementMeter
from labelkeep_plugins.plugins import load_plugins
from labelkeep_plugins.reference.cache import ReferenceCache
from labelkeep_plugins.reference.snapshot import as_reference, move_to


@dataclass
class InjectionStats:
    """How often each path ran (the run report's ``training_steps_with_loss`` is their sum)."""

    forwards: int = 0
    training_forwards: int = 0
    via_loss_value: int = 0
    via_gradient: int = 0
    evaluation_batches: int = 0
    eval_mode_backwards: int = 0  # backwards through forwards read as evaluation (eval mode)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


ErrorHandler = Callable[["InjectionHandle", Exception], None]

_attached: weakref.WeakKeyDictionary[nn.Module, InjectionHandle] = weakref.WeakKeyDictionary()
_standalone = [0]  # handles made by attach() (and LabelPreservingLoss) in this process


def _discard(listeners: list[Callable[[], None]], callback: Callable[[], None]) -> None:
    """Unsubscribe ``callback``; a second call does nothing."""
    if callback in listeners:
        listeners.remove(callback)


def standalone_attaches() -> int:
    """How many handles :func:`attach` made in this process (a session's are not counted)."""
    return _standalone[0]


def _contained(method: Callable[..., Any]) -> Callable[..., Any]:
    """Route a failure inside a hook to the handle's ``on_error`` (if any) and pass through."""

    @functools.wraps(method)
    def wrapper(self: InjectionHandle, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception as exc:
            if self._on_error is None:
                raise
            self._on_error(self, exc)
            return None

    return wrapper


class InjectionHandle:
    """The live attachment; ``detach()`` removes every hook and patch it installed.

    ``on_error``: without it a failure in a hook (unreadable logits, a shape
    mismatch) raises into the user's training step; with it (auto mode) the
    failure goes to the callback and that step passes through unmodified.
    ``reference_cache``: serve the reference's logits for inputs seen before from this
    cache instead of running its forward again (see :mod:`labelkeep_plugins.reference.cache`).
    ``function_matching``: the ``fm`` term's state; its ``perturb`` makes the batch's copy.
    ``listener``: told of each training step and evaluation batch before the plugins are
    (a session's tuner; see :mod:`labelkeep_plugins.injector.listener`).
    """

    def __init__(
        self,
        student: nn.Module,
        reference: nn.Module,
        composer: LossComposer,
        *,
        logits: LogitsSelector = None,
        train_mode_only: bool = True,
        on_error: ErrorHandler | None = None,
        reference_cache: ReferenceCache | None = None,
        listener: object | None = None,
    ) -> None:
        existing = _attached.get(student)
        if existing is not None and existing.attached:
            raise LabelkeepError(
                f"{type(student).__name__} already has labelkeep attached; call "
                "detach() on its handle first (two would add the loss twice)"
            )
        self.student = student
        self.reference = reference
        self.composer = composer
        self.logits_selector = logits
        self.train_mode_only = train_mode_only
        self.reference_cache = reference_cache
        self.stats = InjectionStats()
        self._meters = PassMeters()
        self._on_error = on_error
        self._released: list[CapturedForward] = []
        self._registry = ForwardRegistry(self._released.append)
        self._events = Events(load_plugins().hook, listener)
        self._muted = 0
        self._eval_mode_listeners: list[Callable[[], None]] = []
        self.function_matching = FunctionMatching(self._student_on_copy, self._reference_logits)
        self._attached = True
        self._forward_hook = student.register_forward_hook(
            ForwardHook(self._on_forward), with_kwargs=True
        )
        self._meters.watch(student)  # its eval()/train() calls can end an evaluation pass
        _attached[student] = self
        _forget_compiled_code()
        criterion.add_listener(self)
        scaler.acquire()

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def meter(self) -> AgreementMeter:
        """Agreement with the reference over every evaluation forward seen so far."""
        self._registry.flush(evaluation_only=True)
        self._drain()
        return self._meters.all

    @property
    def last_pass_meter(self) -> AgreementMeter:
        """Agreement over the latest evaluation pass (evaluation forwards between trainings)."""
        self._registry.flush(evaluation_only=True)
        self._drain()
        return self._meters.last

    @property
    def pass_history(self) -> tuple[PassCount, ...]:
        """Per-pass counts of the latest evaluation passes (bounded), oldest first."""
        self._registry.flush(evaluation_only=True)
        self._drain()
        return self._meters.history()

    @property
    def passes_ambiguous(self) -> tuple[str, ...]:
        """Where evaluation passes could not be told apart (empty when they could)."""
        return self._meters.ambiguities()

    def detach(self) -> None:
        """Remove the forward hook and the shared patches; pending gradient hooks go inert."""
        if not self._attached:
            return
        self._attached = False
        self._forward_hook.remove()
        self._meters.unwatch()
        if _attached.get(self.student) is self:
            del _attached[self.student]
        criterion.remove_listener(self)
        scaler.release()
        self._registry.flush()
        self._drain()
        self.function_matching.clear()

    def __enter__(self) -> InjectionHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Let forwards pass untouched (e.g. while a framework adds the loss by its own route)."""
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1

    @torch.compiler.disable
    @_contained
    def _on_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if self._muted or not self._attached:
            return
        self._drain()
        self.composer.apply_pending()  # weights a tuner chose during the previous step
        logits = as_logits(output, self.logits_selector)
        gradients = torch.is_grad_enabled() and logits.requires_grad
        training = gradients and (module.training or not self.train_mode_only)
        reference_logits = self._run_reference(args, kwargs, logits.device)
        check_pair(logits, reference_logits)
        batch = None if training else EvaluationBatch(logits.shape[0], args, kwargs)
        pass_id = self._meters.pass_of_next_forward(training, batch)
        entry = self._registry.add(logits, reference_logits, training, pass_id)
        self.stats.forwards += 1
        if training:
            self.stats.training_forwards += 1
            self.function_matching.capture(
                entry, args, kwargs, self.composer.loss, logits.device.type
            )
            logits.register_hook(functools.partial(self._on_gradient, entry))
        elif gradients:  # eval mode: evaluation without no_grad, unless a backward follows
            logits.register_hook(self._on_eval_mode_backward)

    def _run_reference(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device
    ) -> torch.Tensor:
        move_to(self.reference, device)
        if self.reference_cache is not None:
            return self.reference_cache(args, kwargs, self._reference_logits)
        return self._reference_logits(args, kwargs)

    def _reference_logits(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            output = self.reference(*args, **kwargs)
        return as_logits(output, self.logits_selector).detach()

    def _student_on_copy(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """The student on fm's copy: this hook muted (not captured or counted), BN stats held."""
        with self.muted(), held_running_stats(self.student):
            output = self.student(*args, **kwargs)
        return as_logits(output, self.logits_selector)

    @_contained
    def on_criterion(
        self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor, reduction: str
    ) -> torch.Tensor | None:
        entry = self._registry.find(logits)
        raw = logits
        if entry is None and self._attached and not self._muted:
            found = self._registry.find_through_log_softmax(logits)  # nll_loss(log_softmax(z))
            if found is not None:
                entry, raw = found
        if entry is None or self._muted or not self._attached:
            return None
        if not entry.training:
            entry.targets = _evaluation_labels(target)
            return None
        if not torch.is_grad_enabled():
            return None
        extra, values = self.composer.extra_per_sample(raw, entry.reference, target, checked=True)
        extra = self._with_function_matching(entry, extra, values)
        if not entry.handled:  # several calls on one forward (mixup) count as one step
            entry.handled = True
            self.stats.via_loss_value += 1
            values[GROUND_TRUTH_TERM] = _batch_mean(loss, reduction, logits.shape[0])
            self._notify_training(entry, values, class_labels(target))
        return self.composer.ground_truth_weight * loss + _reduce(extra, reduction)

    def _with_function_matching(
        self, entry: CapturedForward, extra: torch.Tensor, values: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``extra`` plus the weighted fm value of this forward's copy (when fm is on)."""
        fm = self.function_matching.per_sample(entry, self.composer.loss)
        if fm is None:
            return extra
        values[FUNCTION_MATCHING_TERM] = fm.detach().mean()
        return extra + self.composer.loss.weights[FUNCTION_MATCHING_TERM] * fm

    @_contained
    def _on_gradient(self, entry: CapturedForward, grad: torch.Tensor) -> torch.Tensor | None:
        if entry.handled or self._muted or not self._attached:
            return None
        self.function_matching.skip(entry)  # no loss value to add fm to: warn once, go on
        with torch.enable_grad():
            student = entry.student.detach().requires_grad_(True)
            extra, values = self.composer.extra_per_sample(
                student, entry.reference, None, checked=True
            )
            if extra.requires_grad:
                (extra_grad,) = torch.autograd.grad(extra.mean(), student)
            else:  # no teacher term is active: only the user's gradient, at its weight
                extra_grad = torch.zeros_like(student)
        live = scaler.live_scale()
        if live is not None:
            extra_grad = extra_grad * live.to(extra_grad.device)
        self.stats.via_gradient += 1
        self._notify_training(entry, values, None)
        return grad * self.composer.ground_truth_weight + extra_grad.to(grad.dtype)

    def on_eval_mode_backward(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` at each backward through a forward read as evaluation.

        Such a backward is training the loss never reached (the model left in eval
        mode); an adapter that knows its framework's cause says it at the first one.
        Returns the function that unsubscribes ``callback``.
        """
        self._eval_mode_listeners.append(callback)
        return functools.partial(_discard, self._eval_mode_listeners, callback)

    @_contained
    def _on_eval_mode_backward(self, grad: torch.Tensor) -> None:
        """A backward through an eval-mode forward: training the loss never reached."""
        if not self._attached:  # a hook left on a graph built before detach()
            return
        self.stats.eval_mode_backwards += 1
        for callback in list(self._eval_mode_listeners):
            callback()

    def _notify_training(
        self,
        entry: CapturedForward,
        values: Mapping[str, torch.Tensor],
        targets: torch.Tensor | None,
    ) -> None:
        self._events.tell(
            TRAINING_STEP,
            student_logits=entry.student,
            reference_logits=entry.reference,
            targets=targets,
            terms=dict(values),
        )

    def _drain(self) -> None:
        """Count evaluation forwards whose logits were freed (or flushed) since the last look."""
        while self._released:
            entry = self._released.pop()
            if entry.training:
                continue
            self.stats.evaluation_batches += 1
            self._meters.update(entry.pass_id, entry.reference, entry.student, entry.targets)
            self._events.tell(
                EVALUATION_BATCH,
                student_logits=entry.student,
                reference_logits=entry.reference,
                targets=entry.targets,
            )


def handle_of(student: nn.Module) -> InjectionHandle | None:
    """The live handle on ``student``, whoever made it (one per student, ever)."""
    handle = _attached.get(student)
    return handle if handle is not None and handle.attached else None


def attach(
    student: nn.Module,
    reference: nn.Module,
    *,
    weights: Mapping[str, float] | None = None,
    temperature: float | None = None,
    focal: Mapping[str, float] | FocalConfig | bool | None = None,
    logits: LogitsSelector = None,
    train_mode_only: bool = True,
    loss: LossConfig | None = None,
) -> InjectionHandle:
    """Make every training forward of ``student`` train against the label-preserving loss.

    ``reference`` is used as is when it came from :func:`snapshot_reference`, else a
    frozen copy of it is taken (so passing the student itself before compressing it
    is safe). Give either the loss pieces (``weights``, ``temperature``, ``focal``:
    None or False for no focal weights, as in YAML and the default; True or a mapping for
    ``base + scale * 1[reference correct]``) or a whole ``loss`` config.
    """
    config = loss if loss is not None else loss_config(weights, temperature, focal)
    handle = InjectionHandle(
        student,
        as_reference(reference),
        LossComposer(config),
        logits=logits,
        train_mode_only=train_mode_only,
    )
    _standalone[0] += 1
    return handle


def loss_config(
    weights: Mapping[str, float] | None,
    temperature: float | None,
    focal: Mapping[str, float] | FocalConfig | bool | None,
) -> LossConfig:
    """A validated :class:`LossConfig` from keyword pieces; None keeps each default."""
    changes: dict[str, Any] = {}
    if weights is not None:
        changes["weights"] = weights
    if temperature is not None:
        changes["temperature"] = temperature
    if focal is not None:
        changes["focal"] = FocalConfig() if focal is True else focal
    return LossConfig(**changes)


def _forget_compiled_code() -> None:
    """Make code that torch.compile compiled before ``attach`` re-trace and meet the new hook.

    Dynamo does not guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``,
    on by default): a compiled function that inlined the student's forward before the hook
    existed would keep running without it, silently leaving the extra terms out. Nothing to
    do when dynamo was never imported.
    """
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and dynamo.config.skip_nnmodule_hook_guards:
        torch.compiler.reset()


def _batch_mean(loss: torch.Tensor, reduction: str, batch: int) -> torch.Tensor:
    """The user's loss as a detached batch mean, whatever reduction it was computed with."""
    value = loss.detach().float()
    if reduction == "none":
        return value.mean()
    return value / max(1, batch) if reduction == "sum" else value


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    return per_sample.mean()


def _evaluation_labels(target: Any) -> torch.Tensor | None:
    """The labels an evaluation batch is scored on; none where some are an ignore_index.

    Evaluation counts already wait on the device, so the check costs no extra sync; training
    steps pass :func:`class_labels` on unchecked (tuners mask with ``valid_labels``).
    """
    labels = class_labels(target)
    if labels is None or bool((labels < 0).any()):
        return None
    return labels
