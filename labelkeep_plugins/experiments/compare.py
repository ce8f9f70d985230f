"""``labelkeep compare``: does labelkeep help on this script? Plain vs labelkeep, several seeds.

Both arms run the unmodified command under the runner. The plain arm uses
``loss: {weights: {ce: 1.0}}``, which adds nothing to training (the same gradients
as running without labelkeep) but still measures agreement on the script's
evaluation pass; the other arm uses the user's configuration. ``{seed}`` in the
command is replaced by each seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from labelkeep_plugins.config import Config, LossConfig, load_config
from labelkeep_plugins.errors import LabelkeepError
from labelkeep_plugins.experiments.objective import Measurement, measurement_from_report
from labelkeep_plugins.experiments.tables import Column, text_table
from labelkeep_plugins.experiments.trial import TrialRun, output_pointer, run_trial
from labelkeep_plugins.jsonfile import write_json
from labelkeep_plugins.zero_code.runner import check_against_plugins

ARMS = ("plain", "labelkeep")


def plain_loss() -> LossConfig:
    """Only the user's own loss: labelkeep measures agreement and adds nothing to training."""
    return LossConfig(weights={"ce": 1.0})


def add_compare_command(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="run a script plain and with labelkeep over several seeds and compare",
        description="Run CMD under labelkeep twice per seed: plain (measured, nothing added "
        "to training) and with the configured loss; print accuracy, mismatches and negative "
        "flips of both. '{seed}' in CMD is replaced by the seed.",
    )
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    compare.add_argument("--config", help="labelkeep YAML for the labelkeep arm")
    compare.add_argument("--out", default="labelkeep-compare", help="folder for runs and JSON")
    compare.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    compare.set_defaults(handler=compare_from_options)


def compare_from_options(options: argparse.Namespace) -> int:
    command = list(options.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LabelkeepError("no command given; usage: labelkeep compare -- CMD [ARGS...]")
    seeds = _parse_seeds(options.seeds)
    config = load_config(options.config)
    if options.config is not None:
        check_against_plugins(config, options.config)
    results = run_comparison(command, seeds, config, Path(options.out), echo=_stderr)
    print(format_table(results, " ".join(command)))
    return 0


def run_comparison(
    command: Sequence[str],
    seeds: Sequence[int],
    config: Config,
    out: Path,
    echo: Callable[[str], None],
) -> dict[str, list[Measurement]]:
    """Every seed, both arms; the measurements, also written to ``out/compare.json``."""
    results: dict[str, list[Measurement]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        argv = [part.replace("{seed}", str(seed)) for part in command]
        plain = replace(config, loss=plain_loss(), tuner="fixed")
        for arm in ARMS:
            arm_config = plain if arm == "plain" else config
            directory = out / f"seed{seed}" / arm
            run = run_trial(argv, directory, arm_config, header=f"labelkeep compare: {arm}")
            if run.exit_code != 0 or run.report is None:
                raise _failed(f"seed {seed}, {arm}", run, directory)
            measured = measurement_from_report(run.report, source=str(directory))
            results[arm].append(measured)
            echo(
                f"seed {seed} {arm:<9}: accuracy {_percent(measured.accuracy)}, mismatches "
                f"{measured.mismatches}/{measured.samples}, negative flips "
                f"{'n/a' if measured.negative_flips is None else measured.negative_flips} "
                f"({run.seconds:.0f} s)"
            )
        write_json(
            out / "compare.json",
            {
                "command": list(command),
                "seeds": list(seeds[: len(results["plain"])]),
                "results": {arm: [m.to_dict() for m in ms] for arm, ms in results.items()},
            },
        )
    return results


def _failed(which: str, run: TrialRun, directory: Path) -> LabelkeepError:
    """A run with no figures, in the words ``labelkeep tune`` uses (exit code, stderr tail)."""
    if run.exit_code not in (0, None):
        where = output_pointer(directory, run.stderr_tail)
        return LabelkeepError(f"{which}: the command failed (exit {run.exit_code}); {where}")
    return LabelkeepError(f"{which}: {run.problem}")


COMPARE_COLUMNS = (
    Column("arm"),
    Column("accuracy %", "right"),
    Column("mismatches", "right"),
    Column("negative flips", "right"),
)


def format_table(results: dict[str, list[Measurement]], title: str) -> str:
    """Mean ± spread per arm and the reduction factors (ratio of sums over seeds)."""
    rows = []
    for arm, measured in results.items():
        accuracy = [100 * m.accuracy for m in measured if m.accuracy is not None]
        flips = [m.negative_flips for m in measured if m.negative_flips is not None]
        rows.append(
            (
                arm,
                _mean_spread(accuracy),
                _mean_spread([m.mismatches for m in measured]),
                _mean_spread(flips),
            )
        )
    lines = [f"{title}: {len(results['plain'])} seeds", text_table(COMPARE_COLUMNS, rows)]
    lines.append(
        f"reduction (ratio of sums): mismatches {_ratio(results, 'mismatches')}, "
        f"negative flips {_ratio(results, 'negative_flips')}"
    )
    if _unmeasured(results):
        lines.append(UNSEEN_LABELS)
    return "\n".join(lines)


UNSEEN_LABELS = (
    "negative flips: n/a where the script's evaluation computes no loss on the batch, so "
    "labelkeep never saw its labels (compute cross_entropy on the evaluation outputs to count them)"
)


def _unmeasured(results: dict[str, list[Measurement]]) -> bool:
    return any(m.negative_flips is None for measured in results.values() for m in measured)


def _ratio(results: dict[str, list[Measurement]], field: str) -> str:
    if field == "negative_flips" and _unmeasured(results):
        return "n/a"
    plain = sum(getattr(m, field) or 0 for m in results["plain"])
    kept = sum(getattr(m, field) or 0 for m in results["labelkeep"])
    return f"{plain / kept:.2f}x" if kept else "n/a (none left)"


def _mean_spread(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {spread:.1f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise LabelkeepError(f"--seeds must be comma-separated integers, got {text!r}") from exc
    if not seeds:
        raise LabelkeepError("--seeds must name at least one seed, e.g. --seeds 0,1,2")
    return seeds


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
