"""The bench's statistics, on hand-made seeds: reductions, bootstrap intervals, the accuracy
guard, the gap to the limit, the headline and how the table shows them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from test_bench import result

from labelkeep_plugins.bench.aggregate import gap_closed, reduction, summarize
from labelkeep_plugins.bench.headline import headline, headlines
from labelkeep_plugins.bench.plan import RunKey
from labelkeep_plugins.bench.render import (
    difference,
    factor,
    interval,
    markdown_table,
    text_table,
)
from labelkeep_plugins.bench.stats import (
    bootstrap_interval,
    bootstrap_mean_interval,
    ratio_of_sums,
)
from labelkeep_plugins.bench.store import RunResult


def runs_of(cell: str, method: str, figures: list[dict[str, Any]], budget: int = 1):
    """Runs with exactly these figures, seed by seed."""
    return {
        RunKey(cell, method, seed, budget): RunResult(
            RunKey(cell, method, seed, budget), "ok", 1.0, dict(f)
        )
        for seed, f in enumerate(figures)
    }


def counts(mismatches: list[int], accuracy: float = 0.9, reference: float = 0.95):
    return [
        {"mismatches": m, "negative_flips": m // 2, "accuracy": accuracy,
         "reference_accuracy": reference, "samples": 1000}
        for m in mismatches
    ]  # fmt: skip


# Reductions and their intervals ----------------------------------------------------------


def test_reduction_is_a_ratio_of_sums_over_paired_seeds() -> None:
    plain = {0: result("c", "plain", 0), 1: result("c", "plain", 1)}
    tuned = {0: result("c", "tuned", 0), 1: result("c", "tuned", 1)}
    assert reduction(plain, tuned, [0, 1], "mismatches") == pytest.approx(220 / 110)
    assert reduction(plain, tuned, [0, 1], "negative_flips") == pytest.approx(130 / 45)
    assert reduction(plain, tuned, [], "mismatches") is None


def test_reduction_when_nothing_is_left() -> None:
    plain, method = result("c", "plain", 0), result("c", "tuned", 0)
    method.figures["mismatches"] = 0
    assert reduction({0: plain}, {0: method}, [0], "mismatches") == math.inf
    plain.figures["mismatches"] = 0
    assert reduction({0: plain}, {0: method}, [0], "mismatches") == 1.0
    assert factor(math.inf) == "inf (none left)" and factor(None) == "n/a"


def test_identical_seeds_give_a_zero_width_interval() -> None:
    assert bootstrap_interval([100, 100, 100], [50, 50, 50]) == (2.0, 2.0)
    # Paired: each seed halves its own count, so every resample halves; unpaired would not.
    assert bootstrap_interval([100, 200, 300], [50, 100, 150]) == (2.0, 2.0)


def test_a_known_two_seed_case() -> None:
    # Resamples of seeds {0, 1}: 00 -> 10/10, 01 and 10 -> 40/20, 11 -> 30/10.
    plain, row = [10, 30], [10, 10]
    assert ratio_of_sums(plain, row) == 2.0
    assert bootstrap_interval(plain, row) == (1.0, 3.0)


def test_the_interval_is_reproducible_covers_the_estimate_and_needs_two_seeds() -> None:
    plain, row = [100, 120, 110, 90, 130], [50, 70, 40, 60, 45]
    first = bootstrap_interval(plain, row)
    assert first is not None and first == bootstrap_interval(plain, row)
    low, high = first
    assert low < ratio_of_sums(plain, row) < high  # type: ignore[operator]
    assert bootstrap_interval(plain, row, seed=1) != first  # the fixed seed is what repeats
    assert bootstrap_interval([100], [50]) is None
    assert bootstrap_interval([], []) is None


def test_resamples_with_nothing_left_give_infinite_bounds_not_nan() -> None:
    low, high = bootstrap_interval([10, 10], [0, 5])  # type: ignore[misc]
    assert low == 2.0 and math.isinf(high)
    assert bootstrap_interval([0, 0], [0, 0]) == (1.0, 1.0)
    assert interval(2.0, (2.0, math.inf), True) == "2.00x [2.00, inf]"
    assert interval(2.0, None, True) == "2.00x" and interval(1.0, (1.0, 1.0), False) == "-"


# Rows: spread, accuracy guard, gap closed ------------------------------------------------


def test_summary_rows_spread_and_accuracy_gap() -> None:
    runs = {r.key: r for m in ("plain", "default") for s in range(3) for r in [result("c", m, s)]}
    runs[RunKey("c", "default", 2)] = result("c", "default", 2, ok=False)
    rows = summarize(runs, ["c"], ["plain", "default", "tuned"])
    assert [r.method for r in rows] == ["plain", "default"]  # no tuned run at all: no row
    plain, default = rows
    assert plain.mismatches.mean == pytest.approx(110) and plain.mismatches.sd == pytest.approx(10)
    assert default.seeds == (0, 1) and default.failed == 1
    assert default.versus.mismatch_reduction == pytest.approx(220 / 190)
    assert default.versus.accuracy_vs_plain == pytest.approx(-0.5)
    assert default.per_class["1"] == pytest.approx(0.095)
    table = text_table(rows)
    assert "accuracy %" in table.splitlines()[0] and "1 failed" in table
    assert "89.0 ± 1.4*" in table  # 0.5 points below the guard (plain's 89.5): starred
    assert markdown_table(rows).count("\n") == 3


@pytest.mark.parametrize(
    ("plain", "reference", "row", "flagged"),
    [
        (0.90, 0.95, 0.8975, False),  # 0.25 points below plain: within the tolerance
        (0.90, 0.95, 0.8960, True),  # 0.4 below
        (0.90, 0.88, 0.8780, False),  # 2.2 below plain, but only 0.2 below the reference
        (0.90, 0.88, 0.8750, True),
        (0.90, 0.95, 0.9100, False),
    ],
)
def test_the_accuracy_guard_is_the_lower_of_plain_and_the_reference(
    plain: float, reference: float, row: float, flagged: bool
) -> None:
    runs = {
        **runs_of("c", "plain", counts([100, 110], plain, reference)),
        **runs_of("c", "default", counts([90, 95], row, reference)),
    }
    _, default = summarize(runs, ["c"], ["plain", "default"])
    assert default.versus.accuracy_guard == pytest.approx(100 * min(plain, reference))
    assert default.versus.accuracy_vs_guard == pytest.approx(100 * (row - min(plain, reference)))
    assert default.below_guard is flagged and default.to_dict()["below_accuracy_guard"] is flagged
    assert ("*" in text_table([default]).splitlines()[2]) is flagged


def test_the_mean_interval_is_the_percentile_interval_of_resampled_means() -> None:
    """By hand: with two seeds each resample's mean is one of (a+a)/2, (a+b)/2, (b+b)/2."""
    assert bootstrap_mean_interval([-1.0, -1.0, -1.0]) == (-1.0, -1.0)
    assert bootstrap_mean_interval([-2.0, 0.0]) == (-2.0, 0.0)  # both extremes are drawn
    assert bootstrap_mean_interval([0.5]) is None
    low, high = bootstrap_mean_interval([-0.4, -0.6, -0.2, -0.8, -0.5])
    assert -0.8 <= low < -0.5 < high <= -0.2
    assert difference(-0.5, (-0.7, -0.3), True) == "-0.5 [-0.7, -0.3]"
    assert difference(-0.5, None, True) == "-0.5" and difference(0.0, None, False) == "-"


@pytest.mark.parametrize(
    ("row_accuracies", "beyond_noise"),
    [
        ([0.893, 0.895, 0.894], True),  # every seed 0.5-0.7 points below plain's 0.9
        ([0.880, 0.905, 0.910], False),  # one seed 2 points below, the others above
    ],
)
def test_accuracy_below_plain_beyond_the_seeds_spread_is_marked(
    row_accuracies: list[float], beyond_noise: bool
) -> None:
    plain_runs = runs_of("c", "plain", counts([100, 110, 105], 0.90))
    row_runs = runs_of("c", "default", counts([90, 95, 92]))
    for seed, accuracy in enumerate(row_accuracies):
        row_runs[RunKey("c", "default", seed)].figures["accuracy"] = accuracy
    _, default = summarize({**plain_runs, **row_runs}, ["c"], ["plain", "default"])
    bounds = default.versus.accuracy_vs_plain_ci
    assert bounds is not None and bounds[0] <= default.versus.accuracy_vs_plain <= bounds[1]
    assert default.below_plain_beyond_noise is beyond_noise
    assert default.to_dict()["accuracy_below_plain_beyond_noise"] is beyond_noise
    assert ("!" in text_table([default]).splitlines()[2]) is beyond_noise
    line = headline([default], "default", level=None)
    assert line["cells_below_plain_beyond_noise"] == (["c"] if beyond_noise else [])


def test_gap_closed_against_the_limit_row() -> None:
    runs = {
        **runs_of("c", "plain", counts([100, 100])),
        **runs_of("c", "default", counts([60, 60])),
        **runs_of("c", "limit", counts([20, 20]), budget=10),
    }
    rows = summarize(runs, ["c"], ["plain", "default", "limit"])
    assert [(r.method, r.budget) for r in rows] == [("plain", 1), ("default", 1), ("limit", 10)]
    assert rows[1].versus.gap_closed == pytest.approx(50.0)
    assert rows[0].versus.gap_closed is None and rows[2].versus.gap_closed is None
    assert rows[2].versus.mismatch_reduction == pytest.approx(5.0)  # limit against plain x1
    assert "50%" in text_table(rows)
    by_seed = {0: runs[RunKey("c", "plain", 0)]}
    assert gap_closed(by_seed, by_seed, {}) is None  # no limit run
    assert gap_closed(by_seed, by_seed, by_seed) is None  # no gap to close


def test_rows_of_two_budgets_are_compared_with_plain_at_their_own_budget() -> None:
    runs = {
        **runs_of("c", "plain", counts([100, 100])),
        **runs_of("c", "default", counts([50, 50])),
        **runs_of("c", "plain", counts([80, 80]), budget=3),
        **runs_of("c", "default", counts([20, 20]), budget=3),
    }
    rows = summarize(runs, ["c"], ["plain", "default"], budgets=(1, 3))
    assert [(r.method, r.budget) for r in rows] == [
        ("plain", 1),
        ("default", 1),
        ("plain", 3),
        ("default", 3),
    ]
    assert rows[1].versus.mismatch_reduction == 2.0 and rows[3].versus.mismatch_reduction == 4.0
    assert rows[3].versus.mismatch_reduction_ci == (4.0, 4.0)


# Headline --------------------------------------------------------------------------------


def test_headline_median_per_level_best_and_cells_below_the_guard() -> None:
    runs = {}
    cells = ("x/d/moderate", "y/d/moderate", "x/d/heavy")
    for cell, source in zip(cells, ("tuned", "default", "perturbed"), strict=True):
        for seed in range(3):
            for method in ("plain", "tuned"):
                r = result(cell, source if method == "tuned" else "plain", seed)
                r.key = RunKey(cell, method, seed)
                runs[r.key] = r
    rows = summarize(runs, list(cells), ["plain", "tuned"])
    line = headline(rows, "tuned", level="moderate")
    assert line["cells"] == 2 and line["best_mismatch_cell"] == "x/d/moderate"
    assert line["best_mismatch_reduction"] == pytest.approx(330 / 150)
    assert line["median_mismatch_reduction"] == pytest.approx((330 / 150 + 330 / 285) / 2)
    assert line["cells_below_accuracy_guard"] == ["y/d/moderate"]
    assert line["cells_not_reduced"] == []
    assert headline(rows, "tuned")["cells"] == 3  # every level
    assert headline(rows, "tuned", budget=3)["cells"] == 0
    groups = headlines(rows, ["plain", "tuned"])
    assert [(h["method"], h["budget"], h["level"]) for h in groups] == [
        ("tuned", 1, "moderate"),
        ("tuned", 1, "heavy"),
    ]
    assert groups[1]["cells_not_reduced"] == ["x/d/heavy"]  # the noise floor: 330/335


def test_the_plot_is_drawn_or_skipped_with_a_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelkeep_plugins.bench import plot

    runs = {
        r.key: r
        for m, b in (("plain", 1), ("tuned", 1), ("plain", 3), ("tuned", 3), ("limit", 10))
        for s in range(2)
        for r in [result("c/d/heavy", m, s, budget=b)]
    }
    rows = summarize(runs, ["c/d/heavy"], ["plain", "tuned", "limit"], budgets=(1, 3))
    pytest.importorskip("matplotlib")
    path, line = plot.write_plot(rows, tmp_path)
    assert path is not None and path.stat().st_size > 1000 and line == f"wrote {path}"
    single = summarize({k: r for k, r in runs.items() if k.seed == 0}, ["c/d/heavy"], ["plain"])
    assert plot.write_plot(single, tmp_path / "..")[0] is not None  # one seed: no error bars
    real_import = __import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_matplotlib)
    assert plot.write_plot(rows, tmp_path / "none") == (None, plot.MISSING)
    assert "pip install 'labelkeep[bench]'" in plot.MISSING


def test_every_axis_of_the_plot_is_labelled(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from labelkeep_plugins.bench import plot

    runs = {r.key: r for m in ("plain", "tuned") for s in range(3) for r in [result("c", m, s)]}
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot.write_plot(summarize(runs, ["c"], ["plain", "tuned"]), tmp_path)
    axes = figures[0].axes
    assert len(axes) == 2
    assert all(a.get_xlabel() and a.get_ylabel() and a.get_title() for a in axes)
    monkeypatch.undo()
    plt.close("all")


def _drawn(monkeypatch, tmp_path: Path, runs) -> list[Any]:
    """The axes of the figure write_plot draws for ``runs`` (caught before it is closed)."""
    import matplotlib.pyplot as plt

    from labelkeep_plugins.bench import plot

    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)
    methods = sorted({key.method for key in runs})
    cells = sorted({key.cell for key in runs})
    plot.write_plot(summarize(runs, cells, methods), tmp_path)
    monkeypatch.undo()
    plt.close("all")
    return figures[0].axes


def _error_segments(axis: Any) -> list[float]:
    """The height of every error bar drawn on ``axis``."""
    from matplotlib.collections import LineCollection

    return [
        abs(segment[1][1] - segment[0][1])
        for collection in axis.collections
        if isinstance(collection, LineCollection)
        for segment in collection.get_segments()
    ]


def test_one_seed_plot_claims_no_spread_and_draws_no_error_bar(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    runs = {r.key: r for m in ("plain", "tuned") for r in [result("c/d/heavy", m, 0)]}
    axes = _drawn(monkeypatch, tmp_path, runs)
    assert len(axes) == 2
    assert all(a.get_xlabel() and a.get_ylabel() and a.get_title() for a in axes)
    assert all("±" not in a.get_title() and "CI" not in a.get_title() for a in axes)
    assert axes[0].get_title().endswith("\none seed: no error bars")
    assert axes[1].get_title().endswith("\none paired seed: no error bars")
    assert all(_error_segments(a) == [] for a in axes)


def test_the_plot_title_says_how_many_seeds(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    runs = {r.key: r for m in ("plain", "tuned") for s in range(3) for r in [result("c", m, s)]}
    axes = _drawn(monkeypatch, tmp_path, runs)
    assert axes[0].get_title().endswith("\nmean ± sd over 3 seeds")
    assert axes[1].get_title().endswith("\nbootstrap 95% CI over 3 paired seeds")
    assert len(_error_segments(axes[0])) == 2 and len(_error_segments(axes[1])) == 1


def test_a_single_seed_bar_among_several_gets_no_error_bar(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    runs = {
        r.key: r
        for cell in ("a", "b")
        for m in ("plain", "tuned")
        for s in range(3)
        for r in [result(cell, m, s)]
        if not (cell == "b" and m == "tuned" and s > 0)
    }
    axes = _drawn(monkeypatch, tmp_path, runs)
    assert "a bar with no error bar has one seed" in axes[0].get_title()
    assert "a bar with no error bar has one seed" in axes[1].get_title()
    mismatch_bars, reduction_bars = _error_segments(axes[0]), _error_segments(axes[1])
    assert len(mismatch_bars) == 3 and all(height > 0 for height in mismatch_bars)
    assert len(reduction_bars) == 1 and reduction_bars[0] > 0  # b/tuned: one paired seed
