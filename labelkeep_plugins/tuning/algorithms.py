"""Search algorithms for ``labelkeep tune``: NNI's tuner classes, used in-process.

No NNI manager or web UI is involved: a tuner object is asked for parameter sets
(``generate_parameters``) and told the results (``receive_trial_result`` then
``trial_end``), exactly the calls NNI's dispatcher makes. Every algorithm is seeded so
that a resumed search, which replays the finished trials, proposes the same sets.
Without NNI, a built-in random search over the same space takes over.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from labelkeep_plugins.errors import ConfigError, LabelkeepError
from labelkeep_plugins.log import logger
from labelkeep_plugins.tuning.random_search import RandomSearch

ALGORITHMS = ("tpe", "anneal", "evolution", "random")
NNI_CLASSES = {
    "tpe": "nni.algorithms.hpo.tpe_tuner.TpeTuner",
    "anneal": "nni.algorithms.hpo.hyperopt_tuner.HyperoptTuner (algorithm_name='anneal')",
    "evolution": "nni.algorithms.hpo.evolution_tuner.EvolutionTuner",
    "random": "nni.algorithms.hpo.random_tuner.RandomTuner",
}


class SearchAlgorithm(Protocol):
    """What ``labelkeep tune`` needs: proposals, and results to learn from."""

    label: str

    def propose(self, trial: int) -> dict[str, Any]:
        """The parameter set of trial ``trial`` (numbered from 1)."""

    def tell(self, trial: int, value: float | None) -> None:
        """The value to minimize that trial ``trial`` reached; None when it failed."""


class SpaceExhausted(Exception):
    """The algorithm has no untried parameter set left (a small discrete space)."""


class NniSearch:
    """An NNI tuner driven the way NNI's dispatcher drives it, one trial at a time."""

    def __init__(self, tuner: Any, space: Mapping[str, Any], label: str) -> None:
        self.label = label
        self._tuner = tuner
        self._proposed: dict[int, dict[str, Any]] = {}
        tuner.update_search_space(dict(space))

    def propose(self, trial: int) -> dict[str, Any]:
        from nni import NoMoreTrialError  # NNI is installed: it made the tuner

        try:
            proposed = self._tuner.generate_parameters(trial)
        except NoMoreTrialError as exc:
            raise SpaceExhausted(str(exc)) from exc
        parameters = {k: _plain(v) for k, v in proposed.items()}
        self._proposed[trial] = parameters
        return dict(parameters)

    def tell(self, trial: int, value: float | None) -> None:
        parameters = self._proposed.pop(trial)
        if value is not None:
            self._tuner.receive_trial_result(trial, parameters, value)
        self._tuner.trial_end(trial, value is not None)


def make_algorithm(
    name: str,
    space: Mapping[str, Any],
    *,
    seed: int,
    trials: int,
    warn: Callable[[str], None] | None = None,
) -> SearchAlgorithm:
    """The algorithm ``name`` over ``space``; NNI missing -> random search, with one line.

    The space is put in key order first: the tuners draw in that order, and the stored copy
    of the space (results.json) comes back sorted, so a resumed search draws the same.
    """
    space = {key: space[key] for key in sorted(space)}
    if name not in ALGORITHMS:
        raise ConfigError(
            f"unknown --algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}"
        )
    try:
        tuner = _nni_tuner(name, space, seed=seed, trials=trials)
    except _NniMissing as exc:
        message = (
            f"NNI is not installed ({exc}); using a built-in random search instead "
            f"of {name}. For NNI's algorithms: pip install 'nni>=3.0'"
        )
        if warn is None:
            logger.warning(message)
        else:
            warn(f"labelkeep: {message}")
        return RandomSearch(space, seed)
    return tuner


class _NniMissing(Exception):
    """NNI's tuner classes cannot be imported."""


def _nni_tuner(name: str, space: Mapping[str, Any], *, seed: int, trials: int) -> NniSearch:
    try:
        from nni.algorithms.hpo import random_tuner, tpe_tuner
    except ImportError as exc:
        raise _NniMissing(str(exc)) from exc
    _quiet_nni_logs()
    label = f"{name} ({NNI_CLASSES[name]})"
    if name == "tpe":
        return NniSearch(tpe_tuner.TpeTuner("minimize", seed=seed), space, label)
    if name == "random":
        return NniSearch(random_tuner.RandomTuner(seed=seed), space, label)
    if name == "evolution":
        return NniSearch(_seeded_evolution(seed, population(trials)), space, label)
    return NniSearch(_seeded_anneal(seed), space, label)


def _quiet_nni_logs() -> None:
    """NNI's tuners log each step at INFO on stdout, which would break up the live table."""
    for name in ("nni", "hyperopt_AutoML"):
        logging.getLogger(name).setLevel(logging.WARNING)


def population(trials: int) -> int:
    """Evolution's population: NNI's 32 would make any short search purely random."""
    return min(32, max(2, trials // 2))


def _seeded_anneal(seed: int) -> Any:
    """NNI's Anneal tuner (hyperopt's anneal) with its random state seeded (NNI does not)."""
    import numpy as np

    try:
        from nni.algorithms.hpo.hyperopt_tuner import HyperoptTuner
    except ImportError as exc:
        if (getattr(exc, "name", "") or "").startswith("hyperopt"):
            raise LabelkeepError(
                "--algorithm anneal uses NNI's Anneal tuner, which needs the hyperopt package: "
                "pip install hyperopt (or choose tpe, evolution or random, which need nothing "
                "more)"
            ) from exc
        raise _NniMissing(str(exc)) from exc

    class SeededAnnealTuner(HyperoptTuner):  # type: ignore[misc]  # NNI ships no types
        def update_search_space(self, search_space: dict[str, Any]) -> None:
            super().update_search_space(search_space)
            self.rval.rstate = np.random.RandomState(seed)

    return SeededAnnealTuner("anneal", optimize_mode="minimize")


def _seeded_evolution(seed: int, population_size: int) -> Any:
    """NNI's EvolutionTuner with both its random sources seeded (NNI seeds neither)."""
    import numpy as np
    from nni.algorithms.hpo.evolution_tuner import EvolutionTuner

    class SeededEvolutionTuner(EvolutionTuner):  # type: ignore[misc]  # NNI ships no types
        def __init__(self) -> None:
            super().__init__(optimize_mode="minimize", population_size=population_size)
            self._python_random = random.Random(seed)

        def update_search_space(self, search_space: dict[str, Any]) -> None:
            super().update_search_space(search_space)
            self.random_state = np.random.RandomState(seed)
            self.population: list[Any] = []  # NNI's Individual objects
            for _ in range(self.population_size):
                self._random_generate_individual()

        def generate_parameters(self, parameter_id: int, **kwargs: Any) -> Any:
            with _using(self._python_random):
                return super().generate_parameters(parameter_id, **kwargs)

    return SeededEvolutionTuner()


@contextmanager
def _using(generator: random.Random) -> Iterator[None]:
    """Run code that calls the ``random`` module's functions on ``generator``'s state."""
    saved = random.getstate()
    random.setstate(generator.getstate())
    try:
        yield
    finally:
        generator.setstate(random.getstate())
        random.setstate(saved)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so parameter sets are JSON and YAML safe."""
    return value.item() if hasattr(value, "item") else value
