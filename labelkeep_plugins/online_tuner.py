"""The online tuner: sizes the teacher terms during one run from what it measures.

Two controls, both logged into the run report's ``tuner.trajectory``:

* **Gradient share.** The teacher terms' gradient on the logits is kept at
  ``share * informativeness`` times the ground-truth term's (its weight included;
  running averages over training batches). Their weights are scaled by one multiplier
  to do so; their mix, the temperature and the focal weights stay as configured. The
  user's loss keeps its weight, so the learning rate the script was written for keeps
  its meaning, and the teacher can only nudge the recovery, never take it over.
* **Informativeness.** A reference that is nearly one-hot on the training labels (it
  fitted them) says little beyond them, and matching its softened outputs then costs a
  small student capacity for nothing: measured, such cells only got worse. Its share is
  scaled by its softness, the mean probability it leaves off the label on training
  batches, divided by ``FULL_SHARE_SOFTNESS`` (at most 1).
* **Start.** The first step gets the configured teacher weights times
  ``INITIAL_MULTIPLIER``; with ``ce: 0`` (no user loss to hold a share of) the
  configured weights apply as given throughout.
* **Held-out feedback.** When the script evaluates (eval-mode or no-grad passes),
  each pass's mismatches with the reference and its accuracy are compared with the
  previous pass. A rise in mismatches or a fall in accuracy beyond counting noise
  halves the share; a fall in mismatches beyond noise with accuracy kept raises it
  by half, up to ``MAX_SHARE``.

A pass is judged at the second training step after it: the injector hands over an
evaluation batch when its logits are freed, and a script's ``out`` variable often holds
the last one until the next training forward replaced it. Batches arriving in that one
step, fewer samples than the pass they follow, are its tail, not a pass of their own.

The state is plain numbers and lists: ``state_dict()`` goes into a checkpoint saved
with ``torch.save`` and loads back with ``torch.load(weights_only=True)``. Reading it
changes nothing; passes not judged yet are in ``ended_pass`` and ``open_pass``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from labelkeep_plugins.builtin import terms as builtin
from labelkeep_plugins.composer import LossComposer, focal_weights
from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.labels import valid_labels
from labelkeep_plugins.terms import GROUND_TRUTH_TERM, TermInputs
from labelkeep_plugins.tuners import LiveTuner, check_resumable, teacher_scaled

INITIAL_SHARE = 1.0
# The first step runs before anything was measured. A first gradient far larger than the
# rest would shrink Adam's steps for hundreds of steps (its second-moment average decays
# slowly), so it gets the configured teacher weights scaled well down, not as given.
INITIAL_MULTIPLIER = 0.01
MAX_SHARE = 2.0
# A reference that leaves this much of its probability off the label on training batches
# (on average) gets the full share; one that is nearly one-hot on the labels says little
# beyond them, and its share shrinks in proportion.
FULL_SHARE_SOFTNESS = 0.1
MIN_SHARE = 1.0 / 64
MAX_MULTIPLIER = 8.0
EMA_DECAY = 0.9
NOISE_SIGMAS = 2.0  # a change counts when it exceeds this many standard errors
TRAJECTORY_EVERY = 50  # steps between routine trajectory points
TRAJECTORY_LIMIT = 2000


@dataclass
class PassFigures:
    """One evaluation pass: samples, mismatches with the reference, correct predictions."""

    samples: int = 0
    mismatches: int = 0
    correct: int = 0
    labelled: int = 0

    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def add(self, other: PassFigures) -> None:
        for name in ("samples", "mismatches", "correct", "labelled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class OnlineState:
    """Everything the tuner learned so far (what ``state_dict`` holds)."""

    share: float = INITIAL_SHARE
    multiplier: float = INITIAL_MULTIPLIER
    ce_grad: float | None = None
    teacher_grad: float | None = None
    softness: float | None = None
    steps: int = 0
    passes: list[dict[str, Any]] = field(default_factory=list)
    trajectory: list[dict[str, Any]] = field(default_factory=list)


class OnlineTuner(LiveTuner):
    """Adjusts the teacher terms' weight during one run (``tuner: online``)."""

    name = "online"

    def __init__(self, config: Config) -> None:
        self._base = config.loss
        self._probe = LossComposer(config.loss)
        self._forms = _closed_forms(config.loss)
        self._open: PassFigures | None = None  # batches since the last training step
        self._ended: PassFigures | None = None  # the pass that ended there, not judged yet
        self.state = OnlineState()

    # -- what the host asks -------------------------------------------------------------

    def loss_config(self) -> LossConfig:
        """The configured loss with the teacher terms scaled by the current multiplier."""
        return teacher_scaled(self._base, self.state.multiplier)

    def state_dict(self) -> dict[str, Any]:
        """A copy of the state (reading it judges no pass and changes nothing)."""
        pending = {"ended_pass": _plain(self._ended), "open_pass": _plain(self._open)}
        return {"name": self.name, **asdict(self.state), **pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(self.name, state)
        known = {key: value for key, value in state.items() if key in OnlineState.__annotations__}
        self.state = OnlineState(**copy.deepcopy(known))  # the caller's lists stay theirs
        if not _positive(self.state.multiplier):  # zero weights would switch the teacher off
            self.state.multiplier = INITIAL_MULTIPLIER
        self._ended = _figures(state.get("ended_pass"))
        self._open = _figures(state.get("open_pass"))
        self.switch()
        self._push("resumed")

    # -- what it measures ---------------------------------------------------------------

    @hookimpl
    def labelkeep_training_step(
        self,
        student_logits: torch.Tensor,
        reference_logits: torch.Tensor,
        targets: torch.Tensor | None,
        terms: dict[str, torch.Tensor],
    ) -> None:
        self.state.steps += 1
        self._end_passes()
        ce_grad, teacher_grad, softness, differ = self._gradient_norms(
            student_logits, reference_logits, targets
        )
        self.state.ce_grad = _ema(self.state.ce_grad, ce_grad)
        self.state.softness = _ema(self.state.softness, softness)
        if differ:  # logits equal to the reference's say nothing of the teacher's scale
            self.state.teacher_grad = _ema(self.state.teacher_grad, teacher_grad)
        if self._rescale() and self.state.steps % TRAJECTORY_EVERY == 0:
            self._push("step")

    @hookimpl
    def labelkeep_evaluation_batch(
        self,
        student_logits: torch.Tensor,
        reference_logits: torch.Tensor,
        targets: torch.Tensor | None,
    ) -> None:
        if self._open is None:
            self._open = PassFigures()
        figures = self._open
        student = student_logits.argmax(dim=1)
        reference = reference_logits.argmax(dim=1).to(student.device)
        figures.samples += int(student.numel())
        figures.mismatches += int((student != reference).sum())
        if targets is not None and targets.shape == student.shape:
            labels = targets.to(student.device)
            valid = valid_labels(labels, student_logits.shape[1])  # not an ignore_index
            figures.labelled += int(valid.sum())
            figures.correct += int(((student == labels) & valid).sum())

    # -- how it decides -----------------------------------------------------------------

    def _gradient_norms(
        self, student: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[float, float, float, bool]:
        """Mean per-sample norms of d(term)/d(logits), the ground truth's and the teacher's.

        The teacher's is taken as the live loss has it (with the labels it saw, None on the
        gradient path). Also the reference's softness (mean probability off the label) and
        whether the student's logits differ from the reference's. One device sync.
        """
        logits = student.detach().float()
        labels = _labels(logits, reference, targets)
        ce = torch.softmax(logits, dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        teacher = self._teacher_gradient(logits, reference, targets)
        differ = (logits != reference.to(logits)).any().float()
        off_label = 1 - torch.softmax(reference.float(), dim=1).gather(1, labels[:, None])
        ce_norm, teacher_norm, softness, differs = torch.stack(
            [ce.norm(dim=1).mean(), teacher.norm(dim=1).mean(), off_label.mean(), differ]
        ).tolist()
        return ce_norm, teacher_norm, softness, bool(differs)

    def _teacher_gradient(
        self, logits: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """d(teacher terms at the configured weights)/d(logits), zero when none is active.

        Built-in terms by their closed forms (half the cost per step), any other by autograd.
        """
        if self._forms is not None:
            inputs = TermInputs(logits, reference.detach().float(), targets, self._base.temperature)
            grad = torch.zeros_like(logits)
            for form, weight in self._forms:
                grad = grad + weight * form(inputs)
            focal = focal_weights(self._base.focal, inputs.reference, targets)
            return grad if focal is None else grad * focal.unsqueeze(1)
        with torch.enable_grad():
            leaf = logits.clone().requires_grad_(True)
            per_sample, _ = self._probe.extra_per_sample(leaf, reference, targets, checked=True)
            if not per_sample.requires_grad:
                return torch.zeros_like(logits)
            (grad,) = torch.autograd.grad(per_sample.sum(), leaf)
        return grad

    def _rescale(self) -> bool:
        """Set the multiplier from the running averages; False while they do not tell it."""
        ground = self._base.weights.get(GROUND_TRUTH_TERM, 0.0)
        ce, teacher = self.state.ce_grad, self.state.teacher_grad
        if not ground or ce is None or teacher is None or not (ce > 0 and teacher > 0):
            return False
        wanted = self.state.share * self._informativeness() * ground * ce / teacher
        if not math.isfinite(wanted):
            return False
        self.state.multiplier = min(MAX_MULTIPLIER, wanted)
        self.switch()
        return True

    def _informativeness(self) -> float:
        """How much the reference says beyond the labels, in (0, 1]: its softness, scaled."""
        softness = self.state.softness
        if softness is None:
            return 1.0
        return min(1.0, max(softness, 1e-6) / FULL_SHARE_SOFTNESS)

    def _end_passes(self) -> None:
        """At a training step: judge the pass that ended one step ago, and end the open one."""
        ended, arrived = self._ended, self._open
        self._ended = self._open = None
        if ended is not None and arrived is not None and arrived.samples < ended.samples:
            ended.add(arrived)  # the late tail of the pass that ended
            arrived = None
        if ended is not None:
            self._judge(ended)
        self._ended = arrived

    def _judge(self, figures: PassFigures) -> None:
        """Record one finished pass and move the share by how it compares with the last."""
        if not figures.samples:
            return
        previous = _figures(self.state.passes[-1]) if self.state.passes else None
        self.state.passes.append(asdict(figures))
        if previous is None or not previous.samples:
            return
        verdict = _compare(previous, figures)
        if verdict == "worse":
            self.state.share = max(MIN_SHARE, self.state.share / 2)
        elif verdict == "better":
            self.state.share = min(MAX_SHARE, self.state.share * 1.5)
        self._rescale()
        self._push(f"evaluation pass {len(self.state.passes)}: {verdict}")

    def _push(self, event: str) -> None:
        if len(self.state.trajectory) >= TRAJECTORY_LIMIT:
            return
        last = self.state.passes[-1] if self.state.passes else {}
        self.state.trajectory.append(
            {
                "step": self.state.steps,
                "event": event,
                "share": round(self.state.share, 6),
                "multiplier": round(self.state.multiplier, 6),
                "pass_mismatches": last.get("mismatches"),
                "pass_samples": last.get("samples"),
            }
        )


def _compare(before: PassFigures, after: PassFigures) -> str:
    """``worse``, ``better`` or ``same``: a change counts only beyond counting noise.

    A fall in accuracy beyond noise is ``worse`` whatever the mismatches did; a fall in
    mismatches is ``better`` only with the accuracy kept.
    """
    acc_before, acc_after = before.accuracy(), after.accuracy()
    accuracy_fell = False
    if acc_before is not None and acc_after is not None and acc_after < acc_before:
        accuracy_fell = True
        if _beyond_noise((1 - acc_before, before.labelled), (1 - acc_after, after.labelled)):
            return "worse"
    rate_before = before.mismatches / before.samples
    rate_after = after.mismatches / after.samples
    if not _beyond_noise((rate_before, before.samples), (rate_after, after.samples)):
        return "same"
    if rate_after > rate_before:
        return "worse"
    return "same" if accuracy_fell else "better"


def _beyond_noise(before: tuple[float, int], after: tuple[float, int]) -> bool:
    """Do two rates, each (rate, count), differ by more than NOISE_SIGMAS standard errors?"""
    (p_before, n_before), (p_after, n_after) = before, after
    variance = p_before * (1 - p_before) / n_before + p_after * (1 - p_after) / n_after
    floor = 1.0 / max(n_before, n_after)  # at least one sample's worth
    return abs(p_after - p_before) > NOISE_SIGMAS * max(math.sqrt(variance), floor)


def _labels(
    logits: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor | None
) -> torch.Tensor:
    """The labels of a training batch; where none (valid) came, the reference's argmax (the
    gradient path, an ``ignore_index`` such as 255)."""
    predicted = reference.argmax(dim=1).to(logits.device)
    labels = predicted if targets is None else targets.to(logits.device, torch.long)
    return torch.where(valid_labels(labels, logits.shape[1]), labels, predicted)


def _kd_gradient(inputs: TermInputs) -> torch.Tensor:
    """d/d(student) of :func:`builtin.hinton_kd`: T * (softmax(s/T) - softmax(r/T))."""
    t = inputs.temperature
    student, reference = inputs.student / t, inputs.reference / t
    return t * (torch.softmax(student, dim=1) - torch.softmax(reference, dim=1))


def _hard_gradient(inputs: TermInputs) -> torch.Tensor:
    """d/d(student) of :func:`builtin.hard_label_ce`: softmax(s) - onehot(argmax r)."""
    hard = F.one_hot(inputs.reference.argmax(dim=1), inputs.student.shape[1])
    return torch.softmax(inputs.student, dim=1) - hard.to(inputs.student.dtype)


def _mse_gradient(inputs: TermInputs) -> torch.Tensor:
    """d/d(student) of :func:`builtin.logit_mse`: 2 (s - r) / classes."""
    return (inputs.student - inputs.reference) * (2.0 / inputs.student.shape[1])


GradientForm = Callable[[TermInputs], torch.Tensor]
_GRADIENT_FORMS: dict[Callable[[TermInputs], torch.Tensor], GradientForm] = {
    builtin.hinton_kd: _kd_gradient,
    builtin.hard_label_ce: _hard_gradient,
    builtin.logit_mse: _mse_gradient,
}


def _closed_forms(loss: LossConfig) -> list[tuple[GradientForm, float]] | None:
    """Each active teacher term's gradient formula and weight; None if one has none known."""
    from labelkeep_plugins.plugins import loss_terms

    known = loss_terms()
    forms: list[tuple[GradientForm, float]] = []
    for name, weight in loss.weights.items():
        if name == GROUND_TRUTH_TERM or not weight > 0:
            continue
        term = known[name]
        form = _GRADIENT_FORMS.get(term.per_sample)
        if form is None or not term.teacher or term.needs_targets:
            return None
        forms.append((form, weight))
    return forms


def _ema(previous: float | None, value: float) -> float | None:
    if not math.isfinite(value):
        return previous
    return value if previous is None else EMA_DECAY * previous + (1 - EMA_DECAY) * value


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _plain(figures: PassFigures | None) -> dict[str, int] | None:
    return None if figures is None else asdict(figures)


def _figures(value: Any) -> PassFigures | None:
    """Pass figures back from ``state_dict`` form (None, or a dict of the four counts)."""
    if not isinstance(value, dict):
        return None
    names = {f.name for f in fields(PassFigures)}
    return PassFigures(**{key: int(count) for key, count in value.items() if key in names})
