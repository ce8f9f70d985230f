"""Back-to-back evaluation passes stay apart without a training step between them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN, perturbed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from labelkeep_plugins import Config, attach, snapshot_reference
from labelkeep_plugins.injector.evaluation import PassMeters
from labelkeep_plugins.injector.passes import AMBIGUOUS_MODE_CALL, AMBIGUOUS_TAIL, EvaluationBatch
from labelkeep_plugins.zero_code.session import Session

TEST, VALIDATION = 540, 300  # the test set; a validation set of another size
BATCH = 64  # 540 = 8 * 64 + 28: the last batch is partial


def data(size: int, seed: int) -> torch.Tensor:
    return torch.randn(size, 16, generator=torch.Generator().manual_seed(seed))


def slices(x: torch.Tensor, batch: int = BATCH) -> list[torch.Tensor]:
    return [x[start : start + batch] for start in range(0, len(x), batch)]


def loader(x: torch.Tensor) -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=BATCH)


def evaluate(model: nn.Module, batches: Iterable[object], *, call_eval: bool = True) -> None:
    """A user's evaluate(): eval() at the start (unless told not to), then no-grad forwards."""
    if call_eval:
        model.eval()
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, list):  # a DataLoader's (inputs, labels)
                F.cross_entropy(model(batch[0]), batch[1])
            else:
                model(batch)


def report_of(script: Callable[[nn.Module], None]) -> dict[str, object]:
    """Run ``script`` on an attached student; the session's report."""
    torch.manual_seed(0)
    reference = TinyCNN()
    student = perturbed(reference)
    session = Session(Config(strict=True))
    session.attach(student, snapshot_reference(reference))
    try:
        script(student)
        return session.report()
    finally:
        session.detach_all()


def samples(report: dict[str, object]) -> tuple[int, int]:
    """(samples of ``agreement``, samples of ``agreement_all_passes``)."""
    return report["agreement"]["samples"], report["agreement_all_passes"]["samples"]


# --- the script patterns -------------------------------------------------------------

VALIDATION_X, TEST_X = data(VALIDATION, 1), data(TEST, 2)
FULL_X = data(8 * BATCH, 3)  # a test set of full batches only


@pytest.mark.parametrize("call_eval", [True, False])
def test_validation_loader_then_test_loader(call_eval: bool) -> None:
    def script(model: nn.Module) -> None:
        evaluate(model, loader(VALIDATION_X))
        evaluate(model, loader(TEST_X), call_eval=call_eval)

    report = report_of(script)
    assert samples(report) == (TEST, VALIDATION + TEST)
    assert report["passes_ambiguous"] == []


def test_test_loader_twice() -> None:
    report = report_of(lambda m: (evaluate(m, loader(TEST_X)), evaluate(m, loader(TEST_X))))
    assert samples(report) == (TEST, 2 * TEST)
    assert report["recovery_budget"][0]["evaluation_passes"] == 2


def test_test_loader_twice_with_full_batches_and_one_eval_call() -> None:
    def script(model: nn.Module) -> None:
        evaluate(model, loader(FULL_X))
        evaluate(model, loader(FULL_X), call_eval=False)

    assert samples(report_of(script)) == (len(FULL_X), 2 * len(FULL_X))


def test_sliced_tensors_validation_then_test_split_at_the_partial_batch() -> None:
    def script(model: nn.Module) -> None:
        evaluate(model, slices(VALIDATION_X))
        evaluate(model, slices(TEST_X), call_eval=False)

    assert samples(report_of(script)) == (TEST, VALIDATION + TEST)


def test_sliced_tensors_twice_with_full_batches_split_at_the_repeated_first_batch() -> None:
    def script(model: nn.Module) -> None:
        evaluate(model, slices(FULL_X))
        evaluate(model, slices(FULL_X), call_eval=False)

    report = report_of(script)
    assert samples(report) == (len(FULL_X), 2 * len(FULL_X))
    assert report["passes_ambiguous"] == []


def test_an_eval_call_splits_full_batch_passes_over_different_data() -> None:
    other = data(4 * BATCH, 4)
    report = report_of(lambda m: (evaluate(m, slices(other)), evaluate(m, slices(FULL_X))))
    assert samples(report) == (len(FULL_X), len(other) + len(FULL_X))


def test_an_eval_call_through_a_wrapping_module_is_heard() -> None:
    other = data(4 * BATCH, 4)

    def script(model: nn.Module) -> None:
        wrapper = nn.Sequential(model)  # e.g. a DataParallel-like container
        evaluate(wrapper, slices(other))
        evaluate(wrapper, slices(FULL_X))

    assert samples(report_of(script)) == (len(FULL_X), len(other) + len(FULL_X))


# --- what stays as it was --------------------------------------------------------------------


def test_evaluation_after_each_epoch_is_unchanged() -> None:
    """Passes on the old code too: a training step between passes was always a boundary."""
    x, y = data(128, 5), torch.randint(0, 5, (128,), generator=torch.Generator().manual_seed(6))

    def script(model: nn.Module) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _epoch in range(3):
            model.train()
            for xb, yb in zip(slices(x), slices(y), strict=True):
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
            evaluate(model, loader(TEST_X))

    report = report_of(script)
    assert samples(report) == (TEST, 3 * TEST)
    assert report["recovery_budget"][0]["evaluation_passes"] == 3
    assert report["passes_ambiguous"] == []


def test_an_eval_call_before_every_batch_keeps_one_pass() -> None:
    """Passes on the old code too: a per-batch ``predict`` helper must not split the pass."""

    def script(model: nn.Module) -> None:
        for batch in slices(TEST_X):
            evaluate(model, [batch])

    report = report_of(script)
    assert samples(report) == (TEST, TEST)
    assert report["passes_ambiguous"] == []


# --- what cannot be told apart is said -------------------------------------------------------


def test_a_one_batch_pass_then_smaller_batches_is_reported_ambiguous() -> None:
    report = report_of(lambda m: (evaluate(m, [VALIDATION_X[:100]]), evaluate(m, slices(TEST_X))))
    assert len(report["passes_ambiguous"]) == 1
    assert report["passes_ambiguous"][0].startswith(f"TinyCNN: {AMBIGUOUS_TAIL}")


def test_a_one_batch_pass_then_an_eval_call_is_reported_ambiguous() -> None:
    one = VALIDATION_X[:BATCH]  # one batch of the test set's batch size: nothing else tells
    report = report_of(lambda m: (evaluate(m, [one]), evaluate(m, slices(TEST_X))))
    assert samples(report) == (BATCH + TEST, BATCH + TEST)  # counted as one pass, but said so
    assert report["passes_ambiguous"] == [
        f"TinyCNN: {AMBIGUOUS_MODE_CALL} (seen 1 time, latest at pass 1)"
    ]


# --- the rules on their own, and the patches undone ------------------------------------------


def numbered(meters: PassMeters, sizes: Iterable[int]) -> list[int]:
    return [meters.pass_of_next_forward(False, EvaluationBatch(size)) for size in sizes]


def test_a_partial_batch_ends_its_pass_and_a_larger_batch_starts_one() -> None:
    meters = PassMeters()
    assert numbered(meters, [64, 64, 28, 64, 64, 28, 100, 64]) == [1, 1, 1, 2, 2, 2, 3, 3]
    assert meters.ambiguities() == ()


def test_the_same_batch_again_straight_away_stays_in_its_pass() -> None:
    first, second = (data(BATCH, seed) for seed in (7, 8))
    meters = PassMeters()
    order = [first, first, second, first, first]
    assert [meters.pass_of_next_forward(False, EvaluationBatch(BATCH, (x,))) for x in order] == [
        1,
        1,
        1,
        2,
        2,
    ]


def test_a_one_batch_test_set_evaluated_twice_after_eval_is_two_passes() -> None:
    """The whole test set as one tensor, ``model.eval()`` then a forward, twice: two passes."""
    whole = TEST_X[:100]
    report = report_of(lambda m: (evaluate(m, [whole]), evaluate(m, [whole])))
    assert samples(report) == (100, 200)
    assert report["recovery_budget"][0]["evaluation_passes"] == 2
    assert report["passes_ambiguous"] == []


def test_a_latency_loop_over_one_batch_stays_one_pass() -> None:
    """No eval()/train() call between the repeats: one pass whose counts grow."""
    whole = TEST_X[:100]
    report = report_of(lambda m: evaluate(m, [whole, whole, whole]))
    assert samples(report) == (300, 300)


def test_detach_restores_the_patched_methods_by_identity(student, reference_model) -> None:
    iterate, train = DataLoader.__iter__, nn.Module.train
    first = attach(student, reference_model)
    second = attach(perturbed(reference_model), reference_model)
    assert DataLoader.__iter__ is not iterate and nn.Module.train is not train
    first.detach()
    assert nn.Module.train is not train  # the second handle still listens
    second.detach()
    assert DataLoader.__iter__ is iterate and nn.Module.train is train
