"""Weight tuners: what decides the loss weights of a run.

A tuner is made by a factory registered under a name through the
``labelkeep_register_tuners`` hook. The host asks it for the current
:class:`LossConfig`; tuners that learn during a run are told what was measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.loss.terms import GROUND_TRUTH_TERM


@runtime_checkable
class Tuner(Protocol):
    """What the host needs from a tuner."""

    name: str

    def loss_config(self) -> LossConfig:
        """The weights, temperature and focal weights to use now."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (saved with the user's checkpoint)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""


class FixedTuner:
    """Keeps the configured weights for the whole run."""

    name = "fixed"

    def __init__(self, config: Config) -> None:
        self._loss = config.loss

    def loss_config(self) -> LossConfig:
        return self._loss

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(self.name, state)


class LiveTuner:
    """What tuners that change the loss during a run share: the callback to the live loss.

    The session calls :meth:`bind` with the composer's ``defer``; a subclass calls
    :meth:`switch` whenever its :meth:`loss_config` changed.
    """

    _apply: Callable[[LossConfig], None] | None = None

    def loss_config(self) -> LossConfig:
        raise NotImplementedError

    def bind(self, apply: Callable[[LossConfig], None]) -> None:
        """Give the tuner the callback that switches the live loss to new weights."""
        self._apply = apply

    def switch(self) -> None:
        """Hand the live loss the current weights (nothing until bound)."""
        if self._apply is not None:
            self._apply(self.loss_config())


def check_resumable(name: str, state: object) -> dict[str, Any]:
    """``state`` if it was saved by tuner ``name``; otherwise an error naming what it was."""
    found = state.get("name") if isinstance(state, dict) else type(state).__name__
    if not isinstance(state, dict) or found != name:
        raise ConfigError(f"cannot resume tuner {name!r} from state of {found!r}")
    return state


def teacher_scaled(loss: LossConfig, factor: float) -> LossConfig:
    """``loss`` with each teacher term's weight times ``factor``; the user's loss keeps its own.

    Without the user's loss there is no share to hand over, and ``loss`` stays as it is.
    """
    if not loss.weights.get(GROUND_TRUTH_TERM, 0.0):
        return loss
    weights = {
        name: weight if name == GROUND_TRUTH_TERM else weight * factor
        for name, weight in loss.weights.items()
    }
    return loss.reweighted(weights)


REMOVED_TUNERS = {
    "online": "it reduced mismatches in none of the bench's 12 cells (its softness rule held "
    "the teacher off where it helps); use tuner: catchup (the default) or softadapt",
}


def make_tuner(config: Config) -> Tuner:
    """The tuner the configuration names; an unknown name lists the registered ones."""
    from labelkeep_plugins.plugins import tuner_factories

    factories = tuner_factories()
    if config.tuner in REMOVED_TUNERS and config.tuner not in factories:
        raise ConfigError(f"tuner {config.tuner!r} was removed: {REMOVED_TUNERS[config.tuner]}")
    if config.tuner not in factories:
        raise ConfigError(
            f"unknown tuner {config.tuner!r}; registered tuners: {', '.join(sorted(factories))}"
        )
    tuner: Tuner = factories[config.tuner](config)
    return tuner
