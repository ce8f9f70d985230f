"""Weight tuners: what decides the loss weights of a run.

A tuner is made by a factory registered under a name through the
``labelkeep_register_tuners`` hook. The host asks it for the current
:class:`LossConfig`; tuners that learn during a run are told what was measured.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.errors import ConfigError


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
        if state.get("name") != self.name:
            raise ConfigError(
                f"cannot resume tuner {self.name!r} from state of {state.get('name')!r}"
            )


def make_tuner(config: Config) -> Tuner:
    """The tuner the configuration names; an unknown name lists the registered ones."""
    from labelkeep_plugins.plugins import tuner_factories

    factories = tuner_factories()
    if config.tuner not in factories:
        raise ConfigError(
            f"unknown tuner {config.tuner!r}; registered tuners: {', '.join(sorted(factories))}"
        )
    tuner: Tuner = factories[config.tuner](config)
    return tuner
