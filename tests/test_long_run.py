"""A long recovery keeps labelkeep's memory flat: every structure that grows stops at a bound.

A recovery of 20,000 steps that evaluates every 100 runs 200 evaluation passes and
hundreds of tuner updates. Running that for each built-in tuner would take over a
minute here, so each run below is shorter and evaluates more often (300 passes, over
four times the pass history's bound) and the tuners' trajectory bounds are lowered
(each is then exceeded several times); the bounding code is the same. Sizes are read
halfway and at the end, at the same point of the loop: nothing reachable from the
session, and no list or dict in the report, may be larger at the end.
"""

from __future__ import annotations

import functools
import weakref
from collections import deque
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelkeep_plugins import Config, LossConfig
from labelkeep_plugins.injector.attach import InjectionHandle
from labelkeep_plugins.injector.evaluation import HISTORY_PASSES
from labelkeep_plugins.tuners import catchup, softadapt
from labelkeep_plugins.zero_code.instrument import instrumented
from labelkeep_plugins.zero_code.session import Session

STEPS = 1200
EVALUATE_EVERY = 4  # 300 passes, over four times the pass history (64)
BATCH, FEATURES, CLASSES, EVALUATION_BATCHES = 4, 8, 4, 2
TRAJECTORY_LIMIT = 10  # instead of 500 (catchup, softadapt)
TUNERS = ("fixed", "catchup", "softadapt")
# What is known to grow, per tuner: checked on its own (and expected to fail) below.
Sizes = dict[str, int]
_WEAK = (weakref.WeakKeyDictionary, weakref.WeakValueDictionary, weakref.WeakSet)
_CONTAINERS = (list, tuple, set, frozenset, deque, dict, *_WEAK)


@dataclass
class Run:
    """What a long run leaves: its session, the student's handle, sizes halfway and at the end."""

    session: Session
    handle: InjectionHandle
    halfway: Sizes
    end: Sizes
    report: dict


def container_sizes(root: object, path: str) -> Sizes:
    """The length of every container reachable from ``root`` through labelkeep's own objects.

    Models, tensors and third-party objects are not entered; a dict is entered through its
    string keys only (its other keys are ids or pass numbers, whose count is its length).
    """
    sizes: Sizes = {}
    seen: set[int] = set()

    def visit(value: object, where: str) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, _CONTAINERS):
            sizes[where] = len(value)
        for name, child in _children(value, where):
            visit(child, name)

    visit(root, path)
    return sizes


def _children(value: object, where: str) -> Iterator[tuple[str, object]]:
    """What :func:`container_sizes` enters next from ``value``, with the path to each."""
    if isinstance(value, _WEAK):
        return
    if isinstance(value, dict):
        yield from ((f"{where}[{k!r}]", v) for k, v in value.items() if isinstance(k, str))
    elif isinstance(value, _CONTAINERS):
        yield from ((f"{where}[{i}]", v) for i, v in enumerate(value) if _is_labelkeep(v))
    elif _is_labelkeep(value) and hasattr(value, "__dict__"):
        yield from ((f"{where}.{name}", v) for name, v in vars(value).items())


def _is_labelkeep(value: object) -> bool:
    return type(value).__module__.startswith("labelkeep_plugins")


def grown(
    halfway: Sizes, end: Sizes, allowed: AbstractSet[str] = frozenset()
) -> dict[str, tuple[int | None, int]]:
    """Containers larger at the end than halfway (or new), except those ``allowed``."""
    return {
        where: (halfway.get(where), size)
        for where, size in end.items()
        if size > halfway.get(where, 0) and where not in allowed
    }


def batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(64, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (64,), generator=generator)
    while True:
        for start in range(0, 64, BATCH):
            yield x[start : start + BATCH], y[start : start + BATCH]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        for start in range(0, len(y), BATCH):
            F.cross_entropy(model(x[start : start + BATCH]), y[start : start + BATCH])
    model.train()


def sizes_now(session: Session) -> Sizes:
    return {
        **container_sizes(session, "session"),
        **container_sizes(session.report(), "report"),
    }


@functools.cache
def long_run(tuner: str) -> Run:
    """One long run per tuner (shared by the tests), with the trajectory bounds lowered."""
    with pytest.MonkeyPatch.context() as patch:
        for module in (catchup, softadapt):
            patch.setattr(module, "TRAJECTORY_LIMIT", TRAJECTORY_LIMIT)
        return _long_run(tuner)


def _long_run(tuner: str) -> Run:
    """STEPS steps of a tiny linear classifier, an evaluation pass every EVALUATE_EVERY."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    eval_x = torch.randn(BATCH * EVALUATION_BATCHES, FEATURES, generator=generator)
    eval_y = torch.randint(0, CLASSES, (BATCH * EVALUATION_BATCHES,), generator=generator)
    loss = LossConfig(weights={"ce": 1.0, "kd": 1.0, "hard": 0.5})
    with instrumented(Config(loss=loss, tuner=tuner)) as session:
        model = nn.Linear(FEATURES, CLASSES)
        session.reference_for(model, framework="test", where="long run")
        with torch.no_grad():
            model.weight.add_(0.3 * torch.randn(model.weight.shape, generator=generator))
        handle = session.attach(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        halfway: Sizes = {}
        for step, (x, y) in zip(range(1, STEPS + 1), batches(generator), strict=False):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if step % EVALUATE_EVERY == 0:
                evaluate(model, eval_x, eval_y)
            if step == STEPS // 2:
                halfway = sizes_now(session)
        return Run(session, handle, halfway, sizes_now(session), session.report())


@pytest.fixture(params=TUNERS)
def run(request: pytest.FixtureRequest) -> Run:
    return long_run(request.param)


def test_the_run_trained_and_evaluated_throughout(run: Run) -> None:
    passes = STEPS // EVALUATE_EVERY
    report = run.report
    assert report["training_steps_with_loss"] == STEPS
    assert report["agreement_all_passes"]["samples"] == passes * BATCH * EVALUATION_BATCHES
    assert report["agreement"]["samples"] == BATCH * EVALUATION_BATCHES  # the latest pass
    assert report["failures"] == [] and report["passes_ambiguous"] == []
    assert run.handle._meters.passes == passes


def test_pass_history_keeps_the_latest_passes_only(run: Run) -> None:
    history = run.handle.pass_history
    passes = STEPS // EVALUATE_EVERY
    assert passes > 4 * HISTORY_PASSES
    assert [count.pass_id for count in history] == list(
        range(passes - HISTORY_PASSES + 1, passes + 1)
    )
    assert run.report["recovery_budget"][0]["evaluation_passes"] == HISTORY_PASSES


def points_offered(state: dict) -> int:
    """How many trajectory points the tuner had to record over the run, bound or not."""
    if state["name"] == "catchup":
        return state["steps"] // state["interval"]
    assert state["name"] == "softadapt", state["name"]
    return state["steps"] // state["configuration"]["interval"]


def test_tuner_trajectories_stop_at_their_bound(run: Run) -> None:
    state = run.report["tuner"]
    if state["name"] == "fixed":
        assert state == {"name": "fixed"}  # it keeps nothing
        return
    assert points_offered(state) >= 4 * TRAJECTORY_LIMIT
    assert len(state["trajectory"]) == TRAJECTORY_LIMIT


def test_nothing_reachable_from_the_session_grows(run: Run) -> None:
    assert run.halfway, "the sizes were not read halfway"
    assert grown(run.halfway, run.end) == {}
