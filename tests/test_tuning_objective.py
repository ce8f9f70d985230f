"""The tuning objective: ranking, the accuracy floor, reports without agreement."""

from __future__ import annotations

import pytest

from labelkeep_plugins.errors import ConfigError, LabelkeepError
from labelkeep_plugins.experiments.objective import (
    Measurement,
    NoAgreementError,
    Objective,
    measurement_from_report,
    rank,
)


def measured(
    mismatches: int, flips: int | None = None, accuracy: float | None = 0.9, samples: int = 1000
) -> Measurement:
    return Measurement(samples, mismatches, flips, accuracy)


def test_fewest_mismatches_first_then_negative_flips() -> None:
    objective = Objective(baseline_accuracy=0.9)
    trials = {0: measured(80, 40), 1: measured(60, 30), 2: measured(60, 20), 3: measured(70, 10)}
    assert [r.trial for r in rank(trials, objective)] == [2, 1, 3, 0]


def test_accuracy_below_the_floor_ranks_after_every_feasible_trial() -> None:
    objective = Objective(baseline_accuracy=0.9)
    trials = {0: measured(80, 40), 1: measured(10, 5, accuracy=0.89), 2: measured(70, 35)}
    ranking = rank(trials, objective)
    assert [r.trial for r in ranking] == [2, 0, 1]
    assert [r.feasible for r in ranking] == [True, True, False]
    assert ranking[-1].value > 1.0 > ranking[0].value  # tuners see the same order


def test_tolerance_admits_a_small_accuracy_loss() -> None:
    trials = {0: measured(80, 40), 1: measured(10, 5, accuracy=0.896)}
    assert rank(trials, Objective(0.9, tolerance=0.005))[0].trial == 1
    assert rank(trials, Objective(0.9, tolerance=0.0))[0].trial == 0


def test_ties_keep_the_plain_trial() -> None:
    trials = {3: measured(50, 20), 0: measured(50, 20)}
    assert rank(trials, Objective(0.9))[0].trial == 0


def test_unknown_floor_makes_every_trial_feasible() -> None:
    objective = Objective(baseline_accuracy=None)
    assert objective.feasible(measured(5, accuracy=None))
    assert rank({1: measured(9), 2: measured(5, accuracy=0.1)}, objective)[0].trial == 2


def test_value_orders_like_the_ranking() -> None:
    objective = Objective(0.9, tolerance=0.01)
    items = [measured(50, 25), measured(50, 10), measured(49, 40), measured(5, 1, accuracy=0.8)]
    by_value = sorted(items, key=objective.value)
    by_rank = [r.measurement for r in rank(dict(enumerate(items)), objective)]
    assert by_value == by_rank


def test_rates_compare_runs_that_saw_different_sample_counts() -> None:
    trials = {1: measured(60, samples=1000), 2: measured(40, samples=500)}
    assert rank(trials, Objective(None))[0].trial == 1


@pytest.mark.parametrize("tolerance", [-0.1, 1.0, "x", True])
def test_bad_tolerance_is_refused(tolerance: object) -> None:
    with pytest.raises(ConfigError, match="tolerance"):
        Objective(0.9, tolerance=tolerance)  # type: ignore[arg-type]


def test_report_figures_are_read() -> None:
    report = {
        "agreement": {
            "samples": 200,
            "mismatches": 12,
            "negative_flips": 7,
            "compressed_accuracy": 0.91,
            "mismatch_rate": 0.06,
        }
    }
    figures = measurement_from_report(report, source="r.json")
    assert figures == Measurement(200, 12, 7, 0.91)
    assert figures.mismatch_rate == pytest.approx(0.06)


def test_unlabelled_report_has_no_flips_or_accuracy() -> None:
    report = {
        "agreement": {
            "samples": 10,
            "mismatches": 1,
            "negative_flips": None,
            "compressed_accuracy": None,
        }
    }
    figures = measurement_from_report(report, source="r.json")
    assert figures.negative_flips is None and figures.negative_flip_rate == 0.0


@pytest.mark.parametrize("agreement", [None, {"samples": 0, "mismatches": 0}])
def test_no_agreement_tells_the_user_to_evaluate(agreement: object) -> None:
    with pytest.raises(NoAgreementError, match=r"r\.json.*eval mode.*model\.eval\(\)"):
        measurement_from_report({"agreement": agreement}, source="r.json")


def test_a_non_report_is_refused() -> None:
    with pytest.raises(LabelkeepError, match="not a labelkeep run report"):
        measurement_from_report([1, 2], source="r.json")
