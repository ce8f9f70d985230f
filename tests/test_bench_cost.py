"""``labelkeep bench --cost`` pieces, small: interleaved timing, ratios, the memory child."""

from __future__ import annotations

import pytest

from labelkeep_plugins.bench import cost, cost_memory
from labelkeep_plugins.bench.cost_models import CostCase, activation_bytes, cnn, parameter_bytes
from labelkeep_plugins.bench.cost_timing import VARIANTS, time_case

TINY = CostCase("tiny", reference_width=8, student_width=4, batch=16, pool=32)


def test_every_variant_is_timed_interleaved_and_the_ratios_follow() -> None:
    timings = time_case(TINY, repetitions=3, warmup=1)
    assert all(len(timings.samples[v]) == 3 for v in VARIANTS)
    times = timings.to_dict()
    ratios = cost.ratios(times)
    plain = times["plain"]["median_ms"]
    assert ratios["cached_vs_plain"] == pytest.approx(times["cached"]["median_ms"] / plain)
    assert set(ratios) >= {"instrumented_vs_plain", "instrumented_vs_plain_plus_forward"}
    by_hand = times["instrumented"]["median_ms"] / times["handwritten_kd"]["median_ms"]
    assert ratios["instrumented_vs_handwritten_kd"] == pytest.approx(by_hand)
    tuned = times["default_tuner"]["median_ms"] / times["instrumented"]["median_ms"]
    assert ratios["default_tuner_vs_instrumented"] == pytest.approx(tuned)
    result = {
        "case": "tiny",
        "times": times,
        "ratios": ratios,
        "memory": {
            v: {"peak_rss_bytes": 2**20 * (100 + i)}
            for i, v in enumerate(["plain", "instrumented", "cached"])
        },
        "memory_bound_bytes": 2**20,
    }
    header, rule, row = cost.cost_table([result]).splitlines()
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == len(cost.COST_COLUMNS) == header.count("|") - 1 == rule.count("|") - 1
    assert cells[0] == "tiny" and cells[-4:] == ["100.0", "+1.0", "+2.0", "1.0"]


def test_the_hand_written_step_trains_exactly_as_the_instrumented_one() -> None:
    """The yardstick computes the same loss as the instrumented variant, so the ratio of the
    two is labelkeep's overhead and nothing else."""
    import copy

    import torch

    from labelkeep_plugins.bench.cost_models import handwritten_kd_step, training_step
    from labelkeep_plugins.bench.cost_timing import _Loop

    loop = _Loop(TINY)
    x, y = loop.data.next()
    by_hand = copy.deepcopy(loop.student)
    handwritten_kd_step(by_hand, loop.reference, torch.optim.SGD(by_hand.parameters(), 0.1), (x, y))
    handle = loop._attach("instrumented")
    try:
        training_step(loop.student, torch.optim.SGD(loop.student.parameters(), 0.1), x, y)
    finally:
        handle.detach()
    for ours, theirs in zip(loop.student.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_the_default_tuner_variant_runs_the_tuner_only_while_timed() -> None:
    from labelkeep_plugins.bench.cost_timing import _Loop
    from labelkeep_plugins.plugins import load_plugins

    loop = _Loop(TINY)
    for variant in ("default_tuner", "instrumented", "default_tuner"):
        loop.timed(variant)
    assert loop.tuner.steps == 2  # heard the tuned steps, not the fixed one
    assert not load_plugins().is_registered(loop.tuner)


def test_the_memory_bound_counts_parameters_and_one_batch_of_activations() -> None:
    model = cnn(8)
    import torch

    batch = torch.randn(16, 40)
    params = sum(p.numel() for p in model.parameters()) * 4
    assert parameter_bytes(model) > params  # batch-norm buffers too
    assert activation_bytes(model, batch) >= 16 * 8 * 40 * 4 * 3  # conv, norm, relu outputs


def test_the_memory_child_measures_one_variant(capsys) -> None:
    assert cost_memory.main(["0", "nonsense", "1"]) == 2
    assert "usage" in capsys.readouterr().err
    measured = cost_memory.measure(1, "cached", 2)
    assert measured["peak_rss_bytes"] > 0 and measured["cache_bytes"] > 0
    assert measured["variant"] == "cached"
