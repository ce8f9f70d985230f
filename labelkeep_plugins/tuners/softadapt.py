"""SoftAdapt: each loss term's weight a softmax over its recent rate of change.

The seed paper's automatic weighting (Joseph et al., arXiv 2012.01604) is SoftAdapt
(Heydari et al., arXiv 1912.12355). For terms k with values L_k over training:

* rate of change ``s_k = L_k(i) - L_k(i-1)`` between two points;
* ``original``: ``a_k = exp(beta * s_k) / sum_j exp(beta * s_j)``;
* ``normalized``: the same softmax over ``s_k / sum_j |s_j|`` (scale-free rates);
* ``loss_weighted``: ``a_k = L_k(i) * exp(beta * s_k) / sum_j L_j(i) * exp(beta * s_j)``.

A point here is the mean of a term over ``interval`` training steps (a single batch is
too noisy to difference), so the weights change every ``interval`` steps. They are
scaled to sum to the configured total of the tuned terms, so the user's learning rate
keeps the meaning it had under the configured weights. Cost: the terms' batch means
the injector already computed are summed on their device; one host sync per interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from labelkeep_plugins.config import Config, LossConfig, SoftAdaptConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.tuners.base import LiveTuner, check_resumable

TRAJECTORY_LIMIT = 500  # updates kept in the report (the latest ones)
_EPSILON = 1e-12


def softadapt_weights(
    previous: Sequence[float], current: Sequence[float], beta: float, variant: str
) -> list[float]:
    """The SoftAdapt weights (summing to 1) of terms measured at two consecutive points."""
    rates = [now - before for before, now in zip(previous, current, strict=True)]
    if variant == "normalized":
        scale = sum(abs(rate) for rate in rates)
        rates = [rate / scale if scale > _EPSILON else 0.0 for rate in rates]
    top = max(rates)  # shifting by the maximum changes no weight and cannot overflow
    numerators = [math.exp(beta * (rate - top)) for rate in rates]
    if variant == "loss_weighted":
        numerators = [n * max(value, 0.0) for n, value in zip(numerators, current, strict=True)]
    total = sum(numerators)
    if not total > _EPSILON:  # every weighted loss is zero: nothing to prefer
        return [1.0 / len(rates)] * len(rates)
    return [n / total for n in numerators]


class SoftAdaptTuner(LiveTuner):
    """Re-weights the configured terms every ``interval`` steps (``tuner: softadapt``)."""

    name = "softadapt"

    def __init__(self, config: Config) -> None:
        self._base = config.loss
        self.settings: SoftAdaptConfig = config.softadapt
        self.terms = tuple(name for name, weight in config.loss.weights.items() if weight > 0)
        self.total = sum(config.loss.weights[name] for name in self.terms)
        self.weights = {name: config.loss.weights[name] for name in self.terms}
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._previous: dict[str, float] | None = None
        self.steps = 0
        self.updates = 0
        self.trajectory: list[dict[str, Any]] = []

    def loss_config(self) -> LossConfig:
        weights = {**self._base.weights, **self.weights}
        return self._base.reweighted(weights)

    @hookimpl
    def labelkeep_training_step(
        self,
        student_logits: torch.Tensor,
        reference_logits: torch.Tensor,
        targets: torch.Tensor | None,
        terms: dict[str, torch.Tensor],
    ) -> None:
        for name in self.terms:
            value = terms.get(name)
            if value is not None:
                self._sums[name] = self._sums.get(name, 0.0) + value.detach().float()
                self._counts[name] = self._counts.get(name, 0) + 1
        self.steps += 1
        if self.steps % self.settings.interval == 0:
            self._end_interval()

    def _end_interval(self) -> None:
        """Turn the interval's sums into a point; with two points, update the weights."""
        names = sorted(self._sums)
        stacked = torch.stack([self._sums[n].reshape(()) / self._counts[n] for n in names])
        point = dict(zip(names, stacked.cpu().tolist(), strict=True))  # the one sync
        self._sums, self._counts = {}, {}
        if not all(math.isfinite(v) for v in point.values()):
            self._record(point, None, "skipped: a term was not finite")
            return
        previous, self._previous = self._previous, point
        measured = [n for n in self.terms if n in point and previous and n in previous]
        if len(measured) < 2 or previous is None:
            self._record(point, None, "first point" if previous is None else "too few terms")
            return
        self._reweight(measured, previous, point)

    def _reweight(
        self, measured: list[str], previous: dict[str, float], point: dict[str, float]
    ) -> None:
        """Share the measured terms' part of the total by their SoftAdapt weights."""
        shares = softadapt_weights(
            [previous[n] for n in measured],
            [point[n] for n in measured],
            self.settings.beta,
            self.settings.variant,
        )
        fixed = sum(self.weights[n] for n in self.terms if n not in measured)
        budget = self.total - fixed
        self.weights.update({n: budget * share for n, share in zip(measured, shares, strict=True)})
        self.updates += 1
        self._record(point, dict(zip(measured, shares, strict=True)), "updated")
        self.switch()

    def _record(self, point: dict[str, float], shares: dict[str, float] | None, event: str) -> None:
        entry = {"step": self.steps, "event": event, "values": point, "weights": dict(self.weights)}
        if shares is not None:
            entry["shares"] = shares
        self.trajectory.append(entry)
        del self.trajectory[:-TRAJECTORY_LIMIT]

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and lists (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "name": self.name,
            "configuration": self._identity(),
            "weights": dict(self.weights),
            "previous": None if self._previous is None else dict(self._previous),
            "steps": self.steps,
            "updates": self.updates,
            "trajectory": [dict(entry) for entry in self.trajectory],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; a state of another tuner or configuration raises and changes nothing."""
        check_resumable(self.name, state)
        if state.get("configuration") != self._identity():
            raise ConfigError(
                f"cannot resume tuner {self.name!r}: the state was saved with "
                f"{state.get('configuration')!r}, this run is configured with "
                f"{self._identity()!r}; resume with the configuration it was saved under"
            )
        self.weights = {n: float(state["weights"][n]) for n in self.terms}
        previous = state.get("previous")
        self._previous = None if previous is None else {k: float(v) for k, v in previous.items()}
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
        self.trajectory = [dict(entry) for entry in state.get("trajectory", [])]
        self._sums, self._counts = {}, {}
        self.switch()

    def _identity(self) -> dict[str, Any]:
        """What a saved state must agree with to be resumed here."""
        return {
            "terms": {name: self._base.weights[name] for name in self.terms},
            "variant": self.settings.variant,
            "beta": self.settings.beta,
            "interval": self.settings.interval,
        }
