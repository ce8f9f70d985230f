"""The recovery-budget diagnostic: were mismatches still falling when recovery ended?"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN, perturbed
from torch import nn

from labelkeep_plugins import Config, attach, snapshot_reference
from labelkeep_plugins.budget import PassCount, mismatch_trend, weighted_slope
from labelkeep_plugins.injector.evaluation import HISTORY_PASSES, PassMeters
from labelkeep_plugins.zero_code import report as reporters
from labelkeep_plugins.zero_code.exit_notices import NO_COMPRESSION_SEEN
from labelkeep_plugins.zero_code.session import Session


def passes(*mismatches: int, samples: int = 540, first: int = 1) -> list[PassCount]:
    return [PassCount(first + i, samples, m) for i, m in enumerate(mismatches)]


# --- the trend test ------------------------------------------------------------------------


def test_falling_mismatches_say_a_longer_recovery_would_help() -> None:
    verdict = mismatch_trend(passes(60, 50, 41, 33, 27))
    assert verdict.status == "falling"
    assert verdict.passes_used == 5 and verdict.mismatches == (60, 50, 41, 33, 27)
    assert verdict.slope_per_pass < -2 * verdict.standard_error
    assert verdict.message == (
        "mismatches with the reference were still falling over the last 5 evaluation passes "
        "(60 → 27 of 540 samples): a longer recovery would likely cut them further"
    )


def test_flat_mismatches_levelled_off() -> None:
    verdict = mismatch_trend(passes(30, 28, 31, 29, 30))
    assert verdict.status == "flat"
    assert verdict.message.startswith("mismatches with the reference levelled off")


def test_small_noisy_counts_are_within_counting_noise() -> None:
    """3 → 2 looks like a fall of a third, but counts this small carry no trend."""
    verdict = mismatch_trend(passes(3, 2, 3, 1, 2))
    assert verdict.status == "flat"
    assert abs(verdict.slope_per_pass) < 2 * verdict.standard_error


def test_zero_mismatches_are_flat_not_a_division_by_zero() -> None:
    verdict = mismatch_trend(passes(0, 0, 0, 0))
    assert verdict.status == "flat" and verdict.slope_per_pass == 0
    assert verdict.standard_error > 0


def test_rising_mismatches() -> None:
    verdict = mismatch_trend(passes(20, 27, 35, 44, 55))
    assert verdict.status == "rising"
    assert "were rising" in verdict.message


def test_only_the_last_window_of_passes_is_judged() -> None:
    """A run that fell early and then levelled off has had its budget."""
    verdict = mismatch_trend(passes(90, 70, 55, 40, 30, 29, 31, 30, 29, 30))
    assert verdict.status == "flat"
    assert verdict.mismatches == (30, 29, 31, 30, 29, 30)[-5:]
    assert mismatch_trend(passes(90, 70, 55, 40, 30, 29, 27), window=7).status == "falling"
    # Over 7 passes the slope is steep, but the last pass rose: the fall did not go on.
    assert mismatch_trend(passes(90, 70, 55, 40, 30, 29, 31), window=7).status == "flat"


def test_iterative_pruning_is_judged_after_its_last_compression_step() -> None:
    """Evaluations right after each pruner.step() jump up; recovery never does."""
    verdict = mismatch_trend(passes(487, 10, 467, 24, 24))
    assert verdict.status == "flat" and verdict.mismatches == (467, 24, 24)
    still = mismatch_trend(passes(487, 10, 467, 60, 40, 25))
    assert still.status == "falling" and still.mismatches == (467, 60, 40, 25)


def test_too_few_passes_after_the_last_rise_are_said_to_be_too_few() -> None:
    verdict = mismatch_trend(passes(487, 10, 9, 467, 300))
    assert verdict.status == "too_few_passes" and verdict.mismatches == (467, 300)
    assert "rose from 9 to 467 of 540 samples at evaluation pass 4" in verdict.message


def test_a_rise_within_counting_noise_is_no_jump() -> None:
    assert mismatch_trend(passes(60, 50, 55, 41, 33, 27), window=6).status == "falling"


@pytest.mark.parametrize("count, word", [(1, "1 time"), (2, "2 times")])
def test_too_few_passes(count: int, word: str) -> None:
    verdict = mismatch_trend(passes(*[10] * count))
    assert verdict.status == "too_few_passes" and verdict.slope_per_pass is None
    assert verdict.message == (
        f"the script evaluated {word}; "
        "evaluate after each epoch to learn whether a longer recovery would help"
    )


def test_no_passes() -> None:
    verdict = mismatch_trend([])
    assert verdict.status == "no_passes" and verdict.passes_used == 0
    assert verdict.samples_per_pass is None and verdict.mismatches == ()


def test_mixed_sample_counts_use_only_the_trailing_same_size_run() -> None:
    history = passes(5, 1, samples=100) + passes(60, 50, 41, 33, 27, first=3)
    verdict = mismatch_trend(history)
    assert verdict.status == "falling" and verdict.mismatches == (60, 50, 41, 33, 27)
    assert verdict.mixed_sample_counts and verdict.evaluation_passes == 7
    assert "passes of other sizes were left out" in verdict.message


def test_interleaved_loaders_are_judged_on_the_last_ones_series() -> None:
    validation = passes(60, 50, 41, 33, 27)
    test = passes(30, 30, 31, 29, 30, samples=1000)
    history = [p for pair in zip(validation, test, strict=True) for p in pair]
    assert mismatch_trend(history).mismatches == (30, 30, 31, 29, 30)
    assert mismatch_trend(history[:-1]).mismatches == (60, 50, 41, 33, 27)


def test_a_final_test_pass_leaves_the_validation_series_to_judge() -> None:
    history = [*passes(60, 50, 41, 33, 27), PassCount(6, 10_000, 400)]
    verdict = mismatch_trend(history)
    assert verdict.status == "falling" and verdict.samples_per_pass == 540


def test_passes_all_of_different_sizes_give_no_trend() -> None:
    history = [PassCount(i + 1, 100 * (i + 1), 10) for i in range(4)]
    verdict = mismatch_trend(history)
    assert verdict.status == "too_few_passes"
    assert "different sizes (100, 200, 300, 400 samples)" in verdict.message


def test_slope_is_the_weighted_least_squares_fit() -> None:
    counts = [(60, 540), (50, 540), (41, 500), (33, 540), (27, 600)]
    slope, error = weighted_slope(counts)
    x = np.arange(len(counts))
    rate = np.array([m / n for m, n in counts])
    p = np.array([(m + 1) / (n + 2) for m, n in counts])
    weight = np.array([n for _, n in counts]) / (p * (1 - p))
    assert slope == pytest.approx(np.polyfit(x, rate, 1, w=np.sqrt(weight))[0], rel=1e-9)
    centred = x - np.average(x, weights=weight)
    assert error == pytest.approx(1 / np.sqrt(np.sum(weight * centred**2)), rel=1e-9)


def test_window_below_three_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        mismatch_trend(passes(3, 2, 1), window=2)


def test_verdict_is_json_serialisable() -> None:
    labelled = [PassCount(i + 1, 540, m, 540, m // 2) for i, m in enumerate((60, 50, 41))]
    out = json.loads(json.dumps(mismatch_trend(labelled).to_dict()))
    assert out["mismatches"] == [60, 50, 41] and out["negative_flips"] == [30, 25, 20]
    assert set(out) >= {"status", "passes_used", "slope_per_pass", "standard_error", "message"}
    assert mismatch_trend(passes(60, 50, 41)).to_dict()["negative_flips"] is None


# --- the per-pass history ------------------------------------------------------------------

REF, STUDENT = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 2, 2, 0])  # 2 mismatches of 4


def evaluation_pass(meters: PassMeters) -> int:
    meters.pass_of_next_forward(True)
    return meters.pass_of_next_forward(False)


def test_history_is_bounded() -> None:
    meters = PassMeters()
    for _ in range(10_000):
        meters.update(evaluation_pass(meters), REF, STUDENT, None)
    history = meters.history()
    assert len(history) == HISTORY_PASSES
    assert [p.pass_id for p in history] == list(range(10_001 - HISTORY_PASSES, 10_001))
    assert meters.all.samples == 40_000


def test_late_batches_count_in_their_own_pass() -> None:
    meters = PassMeters()
    first = evaluation_pass(meters)
    meters.update(first, REF, STUDENT, None)
    second = evaluation_pass(meters)
    meters.update(second, REF, REF, None)
    meters.update(first, REF, STUDENT, None)  # released after the second pass began
    assert meters.history() == (PassCount(1, 8, 4), PassCount(2, 4, 0))
    assert meters.last.samples == 4


def test_a_late_batch_of_a_dropped_pass_is_not_counted_again() -> None:
    meters = PassMeters(history=3)
    ids = [evaluation_pass(meters) for _ in range(4)]
    for pass_id in ids:
        meters.update(pass_id, REF, STUDENT, None)
    meters.update(ids[0], REF, STUDENT, None)
    assert [p.pass_id for p in meters.history()] == ids[1:]


def test_history_counts_negative_flips_of_labelled_batches() -> None:
    meters = PassMeters()
    pass_id = evaluation_pass(meters)
    meters.update(pass_id, REF, STUDENT, REF)  # targets = reference: each mismatch a flip
    meters.update(pass_id, REF, STUDENT, None)
    assert meters.history() == (PassCount(1, 8, 4, labelled=4, negative_flips=2),)


# --- attached to a model -------------------------------------------------------------------


def recover(student: nn.Module, epochs: int, data: torch.Tensor, labels: torch.Tensor) -> None:
    """Fine-tune with an evaluation pass (two batches) after each epoch, like a user script."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    for _epoch in range(epochs):
        student.train()
        for start in range(0, len(data), 64):
            optimizer.zero_grad()
            batch = slice(start, start + 64)
            F.cross_entropy(student(data[batch]), labels[batch]).backward()
            optimizer.step()
        student.eval()
        with torch.no_grad():
            for half in data.chunk(2):
                student(half)


def data_of(reference: nn.Module, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(size, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return x, reference.eval()(x).argmax(1)


def mismatches_now(student: nn.Module, reference: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int((student.eval()(x).argmax(1) != reference.eval()(x).argmax(1)).sum())


def test_attached_model_gets_a_verdict_over_its_evaluation_passes() -> None:
    torch.manual_seed(0)
    reference = TinyCNN()
    student = perturbed(reference, scale=0.3)
    x, y = data_of(reference)
    with attach(student, snapshot_reference(reference)) as handle:
        recover(student, 5, x, y)
        assert handle.meter.samples == 5 * len(x)  # counts the forwards still pending
        history = handle._meters.history()
    assert [(p.pass_id, p.samples) for p in history] == [(i, len(x)) for i in range(1, 6)]
    assert history[-1].mismatches == mismatches_now(student, reference, x)
    verdict = mismatch_trend(history)
    assert verdict.status == "falling" and verdict.passes_used == 5  # 5 epochs are too few here
    assert not verdict.mixed_sample_counts


def test_report_holds_one_verdict_per_student_and_the_exit_line_tells_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = data_of(model)
    session = Session(Config())
    session.reference_for(model, framework="test", where="start")
    with torch.no_grad():
        for parameter in model.parameters():  # the compression step
            parameter.mul_(0.6)
    session.attach(model)
    try:
        recover(model, 3, x, y)
        report = json.loads(json.dumps(session.report()))
    finally:
        session.detach_all()
    [budget] = report["recovery_budget"]
    assert budget["student"] == "TinyCNN" and budget["passes_used"] == 3
    assert budget["samples_per_pass"] == len(x) and len(budget["mismatches"]) == 3
    assert budget["status"] in {"falling", "flat", "rising"}
    report["recovery_budget"] = [{**budget, "status": "falling", "message": "still falling"}]
    monkeypatch.delenv("RANK", raising=False)
    reporters.labelkeep_run_finished(report=report, path=None)
    assert capsys.readouterr().err == "labelkeep: still falling\n"
    monkeypatch.setenv("RANK", "1")
    reporters.labelkeep_run_finished(report=report, path=None)
    assert capsys.readouterr().err == ""


def test_no_exit_line_unless_falling(capsys: pytest.CaptureFixture[str]) -> None:
    for status in ("flat", "rising", "too_few_passes", "no_passes"):
        report = {"recovery_budget": [{"student": "Net", "status": status, "message": "m"}]}
        reporters.labelkeep_run_finished(report=report, path=None)
    reporters.labelkeep_run_finished(report={}, path=None)
    assert capsys.readouterr().err == ""


def test_exit_line_with_several_falling_students(capsys: pytest.CaptureFixture[str]) -> None:
    falling = {"status": "falling", "message": "still falling"}
    report = {
        "recovery_budget": [{"student": "A", **falling}, {"student": "B", **falling}],
        "training_steps_with_loss": 4,
    }
    reporters.labelkeep_run_finished(report=report, path=None)
    assert capsys.readouterr().err == "labelkeep: A: still falling (and 1 other model(s))\n"


def test_no_exit_line_when_no_step_was_trained_with_the_loss(capsys) -> None:
    """Training in eval mode is read as evaluation: its "passes" say nothing of recovery."""
    falling = {"student": "A", "status": "falling", "message": "still falling"}
    report = {"recovery_budget": [falling], "training_steps_with_loss": 0}
    reporters.tell_recovery_budget(report)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("rank", "said"), [(None, True), (0, True), (1, False)])
def test_only_rank_zero_says_the_end_of_run_lines(rank, said, capsys, monkeypatch) -> None:
    """An mp.spawn worker has no RANK variable: the group rank in its report keeps rank 1 quiet."""
    monkeypatch.delenv("RANK", raising=False)
    falling = {"student": "A", "status": "falling", "message": "still falling"}
    report = {
        "recovery_budget": [falling],
        "training_steps_with_loss": 4,
        "warnings": [NO_COMPRESSION_SEEN],
        "distributed_rank": rank,
    }
    reporters.labelkeep_run_finished(report=report, path=None)
    err = capsys.readouterr().err
    assert ("still falling" in err) is said and ("no compression was seen" in err) is said
