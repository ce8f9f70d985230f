"""``labelkeep bench``: argument parsing, the checks made before anything runs, and the run.

Every check that can fail (names, counts, the output folder, a resumable record) runs
before the first child process starts, so bad input costs nothing and loses nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.cells import (
    CELLS,
    DATASETS,
    FIRST_VALIDATION_SEED,
    FRAMEWORKS,
    LEVELS,
    PROFILES,
    Cell,
    Profile,
    parse_names,
    select_cells,
    unavailable,
)
from labelkeep_plugins.bench.plan import KNOWN_METHODS, BenchSettings
from labelkeep_plugins.bench.rows import choose_methods
from labelkeep_plugins.bench.store import RESULTS_FILE, BenchRecord, check_same, load_record
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.log import logger

DEFAULT_OUT = "labelkeep-bench"
DEFAULT_JOBS = 2
ALL_FAILED = 1


def add_bench_command(commands: Any) -> None:
    """Register ``labelkeep bench`` on the ``labelkeep`` parser's subparsers."""
    bench = commands.add_parser(
        "bench",
        help="plain vs labelkeep recovery for every framework, dataset and compression level",
        description="Run the bench's user-style scripts (torch-pruning, NNI, Brevitas on "
        "MNIST-1D and digits, each at a moderate and a heavy compression) under labelkeep "
        "run: plain recovery, its noise floor, labelkeep's defaults and SoftAdapt (and, with "
        "--full, the tuned and fm rows, 3x the recovery epochs and a long-distillation "
        "limit), on several evaluation seeds; print and write the table, JSON, Markdown and "
        "a plot. --cost measures the step time and memory of an instrumented loop instead.",
    )
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smoke run: under 2 minutes")
    size.add_argument(
        "--full", action="store_true", help="the whole grid (about 2 hours on 2 cores)"
    )
    bench.add_argument("--cost", action="store_true", help="measure step time and memory only")
    bench.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    bench.add_argument("--resume", action="store_true", help="continue the bench in --out")
    bench.add_argument("--frameworks", nargs="+", help=f"any of {', '.join(FRAMEWORKS)}")
    bench.add_argument("--datasets", nargs="+", help=f"any of {', '.join(DATASETS)}")
    bench.add_argument("--levels", nargs="+", help=f"any of {', '.join(LEVELS)}")
    bench.add_argument("--methods", nargs="+", help=f"rows, any of {', '.join(KNOWN_METHODS)}")
    bench.add_argument("--budgets", nargs="+", help="x the recovery epochs, e.g. 1 3")
    bench.add_argument(
        "--seeds", type=int, help="evaluation seeds per cell (default 3, --full 5, --quick 1)"
    )
    bench.add_argument(
        "--trials",
        type=int,
        help="tuning trials per cell (default 0, --full 8, --quick 1); 0: no tuned row",
    )
    bench.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help=f"runs at a time (default {DEFAULT_JOBS})"
    )
    bench.set_defaults(handler=bench_from_options)


def bench_from_options(options: argparse.Namespace) -> int:
    out = Path(options.out)
    if options.cost:
        ensure_writable(out)
        from labelkeep_plugins.bench.cost import run_cost

        return run_cost(out, quick=options.quick, stream=sys.stderr)
    profile = PROFILES["quick" if options.quick else "full" if options.full else "default"]
    settings_args, cells = _checked(options, profile)
    ensure_writable(out)
    skipped = unavailable(cells)
    for key, why in skipped.items():
        logger.warning(f"bench: skipping {key}: {why}")
    runnable = [cell for cell in cells if cell.key not in skipped]
    if not runnable:
        logger.error("bench: nothing to run: every selected cell is skipped")
        return ALL_FAILED
    methods, notes = choose_methods(profile, settings_args["requested"], settings_args["trials"])
    settings = _settings(profile, runnable, methods, settings_args)
    record = _record(settings, out, options.resume)
    record.skipped, record.notes = skipped, notes
    from labelkeep_plugins.bench.session import run_bench

    cells_by_key = {c.key: c for c in runnable}
    return run_bench(record, cells_by_key, out, _command_words(options), jobs=options.jobs)


def _checked(options: argparse.Namespace, profile: Profile) -> tuple[dict[str, Any], list[Cell]]:
    """Every option checked (names, counts, budgets) before anything is written or run."""
    frameworks = parse_names(options.frameworks, list(FRAMEWORKS), "framework")
    datasets = parse_names(options.datasets, list(DATASETS), "dataset")
    levels = parse_names(options.levels, list(LEVELS), "level")
    checked = {
        "requested": parse_names(options.methods, list(KNOWN_METHODS), "method"),
        "seeds": _count("--seeds", options.seeds, profile.seeds, minimum=1),
        "trials": _count("--trials", options.trials, profile.trials, minimum=0),
        "budgets": parse_budgets(options.budgets) or profile.budgets,
    }
    _count("--jobs", options.jobs, DEFAULT_JOBS, minimum=1)
    cells = select_cells(profile, frameworks, datasets, levels)
    if not cells:
        raise ConfigError(
            "no bench cell matches the given --frameworks, --datasets and --levels; cells: "
            + ", ".join(cell.key for cell in CELLS)
        )
    return checked, cells


def parse_budgets(values: list[str] | None) -> tuple[int, ...]:
    """``--budgets 1 3`` or ``1,3``: whole multiples of the script's recovery epochs."""
    words = [w.strip() for value in values or () for w in value.split(",") if w.strip()]
    budgets = []
    for word in words:
        try:
            budget = int(word)
        except ValueError:
            budget = 0
        if budget < 1:
            raise ConfigError(
                f"--budgets takes whole numbers >= 1 (multiples of the script's recovery "
                f"epochs), got {word!r}"
            )
        budgets.append(budget)
    return tuple(sorted(set(budgets)))


def ensure_writable(out: Path) -> None:
    """Create ``out`` and write a probe file in it, so an unusable folder fails up front."""
    probe = out / f".labelkeep-bench-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write to the output folder {str(out)!r} "
            f"({exc.strerror or type(exc).__name__}); pass a writable --out"
        ) from exc


def _count(flag: str, given: int | None, default: int, *, minimum: int) -> int:
    value = default if given is None else given
    if value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}, got {value}")
    return value


def _settings(
    profile: Profile, cells: list[Cell], methods: tuple[str, ...], checked: dict[str, Any]
) -> BenchSettings:
    return BenchSettings(
        profile=profile.name,
        cells=tuple(cell.key for cell in cells),
        methods=methods,
        seeds=tuple(range(checked["seeds"])),
        trials=checked["trials"],
        epochs=profile.epochs,
        pretrain_epochs=profile.pretrain_epochs,
        validation_seeds=tuple(
            range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + profile.validation_seeds)
        ),
        budgets=checked["budgets"],
    )


def _record(settings: BenchSettings, out: Path, resume: bool) -> BenchRecord:
    stored = load_record(out)
    if stored is None:
        if resume:
            logger.info(f"bench: nothing to resume in {out}; starting")
        return BenchRecord(settings)
    if not resume:
        raise ConfigError(
            f"{out / RESULTS_FILE} already holds a bench ({len(stored.runs)} run(s)); pass "
            f"--resume to continue it, or another --out (or delete {str(out)!r}) to start over"
        )
    check_same(stored.settings, settings, out)
    return stored


def _command_words(options: argparse.Namespace) -> list[str]:
    """The options as a command line, for the record and the Markdown file."""
    words = ["--quick"] if options.quick else ["--full"] if options.full else []
    for flag in ("frameworks", "datasets", "levels", "methods", "budgets"):
        if getattr(options, flag):
            words += [f"--{flag}", *getattr(options, flag)]
    for flag in ("seeds", "trials"):
        if getattr(options, flag) is not None:
            words += [f"--{flag}", str(getattr(options, flag))]
    return [*words, "--out", options.out]
