"""The online tuner: sizes the teacher terms during one run from what it measures.

Two controls, both logged into the run report's ``tuner.trajectory``:

* **Gradient share.** The teacher terms' gradient on the logits is kept at ``share``
  times the ground-truth term's (running averages over training batches). Their
  weights are scaled by one multiplier to do so; their mix, the temperature and
  the focal weights stay as configured. The user's loss keeps its weight, so the
  learning rate the script was written for keeps its meaning, and the teacher can
  only nudge the recovery, never take it over.
* **Held-out feedback.** When the script evaluates (eval-mode or no-grad passes),
  each pass's mismatches with the reference and its accuracy are compared with the
  previous pass. A rise in mismatches or a fall in accuracy beyond counting noise
  halves the share; a fall in mismatches beyond noise with accuracy kept raises it
  by half, up to ``max_share``.

The state is plain numbers and lists: ``state_dict()`` goes into a checkpoint saved
with ``torch.save`` and loads back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from labelkeep_plugins.composer import LossComposer
from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.terms import GROUND_TRUTH_TERM

INITIAL_SHARE = 0.25
MAX_SHARE = 1.0
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


@dataclass
class OnlineState:
    """Everything the tuner learned so far (what ``state_dict`` holds)."""

    share: float = INITIAL_SHARE
    multiplier: float = 0.0
    ce_grad: float | None = None
    teacher_grad: float | None = None
    steps: int = 0
    passes: list[dict[str, Any]] = field(default_factory=list)
    trajectory: list[dict[str, Any]] = field(default_factory=list)


class OnlineTuner:
    """Adjusts the teacher terms' weight during one run (``tuner: online``)."""

    name = "online"

    def __init__(self, config: Config) -> None:
        self._base = config.loss
        self._probe = LossComposer(config.loss)
        self._apply: Callable[[LossConfig], None] | None = None
        self._current_pass: PassFigures | None = None
        self.state = OnlineState()

    # -- what the host asks -------------------------------------------------------------

    def loss_config(self) -> LossConfig:
        """The configured loss with the teacher terms scaled by the current multiplier."""
        weights = {
            name: weight if name == GROUND_TRUTH_TERM else weight * self.state.multiplier
            for name, weight in self._base.weights.items()
        }
        return self._base.with_overrides(weights=weights)

    def bind(self, apply: Callable[[LossConfig], None]) -> None:
        """Give the tuner the callback that switches the live loss to new weights."""
        self._apply = apply

    def state_dict(self) -> dict[str, Any]:
        self._close_pass()
        return {"name": self.name, **asdict(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("name") != self.name:
            found = state.get("name") if isinstance(state, dict) else type(state).__name__
            raise ConfigError(f"cannot resume tuner {self.name!r} from state of {found!r}")
        known = {key: value for key, value in state.items() if key in OnlineState.__annotations__}
        self.state = OnlineState(**known)
        self._current_pass = None
        if self._apply is not None:
            self._apply(self.loss_config())
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
        self._close_pass()
        self.state.steps += 1
        ce_grad, teacher_grad = self._gradient_norms(student_logits, reference_logits, targets)
        self.state.ce_grad = _ema(self.state.ce_grad, ce_grad)
        self.state.teacher_grad = _ema(self.state.teacher_grad, teacher_grad)
        self._rescale("step" if self.state.steps % TRAJECTORY_EVERY == 0 else None)

    @hookimpl
    def labelkeep_evaluation_batch(
        self,
        student_logits: torch.Tensor,
        reference_logits: torch.Tensor,
        targets: torch.Tensor | None,
    ) -> None:
        figures = self._current_pass = self._current_pass or PassFigures()
        student = student_logits.argmax(dim=1)
        figures.samples += int(student.numel())
        figures.mismatches += int((student != reference_logits.argmax(dim=1)).sum())
        if targets is not None and targets.shape == student.shape:
            figures.labelled += int(student.numel())
            figures.correct += int((student == targets.to(student.device)).sum())

    # -- how it decides -----------------------------------------------------------------

    def _gradient_norms(
        self, student: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[float, float]:
        """Mean per-sample norm of d(term)/d(logits): the ground truth's, and the teacher's."""
        logits = student.detach().float()
        labels = targets if targets is not None else reference.argmax(dim=1)
        ce = torch.softmax(logits, dim=1)
        ce[torch.arange(len(labels), device=ce.device), labels.to(ce.device)] -= 1.0
        with torch.enable_grad():
            leaf = logits.clone().requires_grad_(True)
            per_sample, _ = self._probe.extra_per_sample(leaf, reference, labels, checked=True)
            (teacher,) = torch.autograd.grad(per_sample.sum(), leaf)
        return float(ce.norm(dim=1).mean()), float(teacher.norm(dim=1).mean())

    def _rescale(self, event: str | None) -> None:
        ce, teacher = self.state.ce_grad, self.state.teacher_grad
        if ce is None or not teacher or not math.isfinite(ce / teacher):
            return
        self.state.multiplier = min(MAX_MULTIPLIER, self.state.share * ce / teacher)
        if self._apply is not None:
            self._apply(self.loss_config())
        if event is not None:
            self._push(event)

    def _close_pass(self) -> None:
        """An evaluation pass ends at the next training step (or when the state is read)."""
        figures, self._current_pass = self._current_pass, None
        if figures is None or not figures.samples:
            return
        previous = self.state.passes[-1] if self.state.passes else None
        self.state.passes.append(asdict(figures))
        if previous is not None:
            verdict = _compare(PassFigures(**previous), figures)
            if verdict == "worse":
                self.state.share = max(MIN_SHARE, self.state.share / 2)
            elif verdict == "better":
                self.state.share = min(MAX_SHARE, self.state.share * 1.5)
            self._rescale(f"evaluation pass {len(self.state.passes)}: {verdict}")

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
    """``worse``, ``better`` or ``same``: a change counts only beyond counting noise."""
    rate_before = before.mismatches / before.samples
    rate_after = after.mismatches / after.samples
    if _beyond_noise(rate_after - rate_before, rate_before, rate_after, before, after):
        return "worse" if rate_after > rate_before else _accuracy_kept(before, after)
    acc_before, acc_after = before.accuracy(), after.accuracy()
    if acc_before is not None and acc_after is not None and acc_after < acc_before:
        diff = acc_before - acc_after
        if _beyond_noise(diff, 1 - acc_before, 1 - acc_after, before, after):
            return "worse"
    return "same"


def _accuracy_kept(before: PassFigures, after: PassFigures) -> str:
    acc_before, acc_after = before.accuracy(), after.accuracy()
    if acc_before is None or acc_after is None or acc_after >= acc_before:
        return "better"
    return "same"


def _beyond_noise(
    diff: float, p_before: float, p_after: float, before: PassFigures, after: PassFigures
) -> bool:
    """Is a difference of two rates larger than NOISE_SIGMAS binomial standard errors?"""
    variance = p_before * (1 - p_before) / before.samples + p_after * (1 - p_after) / after.samples
    floor = 1.0 / max(before.samples, after.samples)  # at least one sample's worth
    return abs(diff) > NOISE_SIGMAS * max(math.sqrt(variance), floor)


def _ema(previous: float | None, value: float) -> float:
    if not math.isfinite(value):
        return previous if previous is not None else 0.0
    return value if previous is None else EMA_DECAY * previous + (1 - EMA_DECAY) * value
