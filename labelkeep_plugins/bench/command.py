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
    PROFILES,
    Profile,
    parse_names,
    select_cells,
    unavailable,
)
from labelkeep_plugins.bench.plan import (
    DEFAULT,
    ONLINE,
    PERTURBED,
    PLAIN,
    TUNED,
    BenchSettings,
)
from labelkeep_plugins.bench.store import RESULTS_FILE, BenchRecord, check_same, load_record
from labelkeep_plugins.errors import ConfigError

DEFAULT_OUT = "labelkeep-bench"
ALL_FAILED = 1


def add_bench_command(commands: Any) -> None:
    """Register ``labelkeep bench`` on the ``labelkeep`` parser's subparsers."""
    bench = commands.add_parser(
        "bench",
        help="plain vs labelkeep (default, tuned) recovery for every framework and dataset",
        description="Run the bench's user-style scripts (torch-pruning, NNI, Brevitas on "
        "MNIST-1D and digits) under labelkeep run: plain recovery, labelkeep's defaults and "
        "labelkeep tune's best configuration (searched on a validation seed and split), on "
        "several evaluation seeds; print and write the table, JSON, Markdown and a plot. "
        "--cost measures the step time and memory of an instrumented loop instead.",
    )
    bench.add_argument("--quick", action="store_true", help="a smoke run: under 2 minutes")
    bench.add_argument("--cost", action="store_true", help="measure step time and memory only")
    bench.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    bench.add_argument("--resume", action="store_true", help="continue the bench in --out")
    bench.add_argument("--frameworks", nargs="+", help=f"any of {', '.join(FRAMEWORKS)}")
    bench.add_argument("--datasets", nargs="+", help=f"any of {', '.join(DATASETS)}")
    bench.add_argument("--seeds", type=int, help="evaluation seeds per cell (default 3)")
    bench.add_argument("--trials", type=int, help="tuning trials per cell; 0: no tuned row")
    bench.set_defaults(handler=bench_from_options)


def bench_from_options(options: argparse.Namespace) -> int:
    out = Path(options.out)
    if options.cost:
        ensure_writable(out)
        from labelkeep_plugins.bench.cost import run_cost

        return run_cost(out, quick=options.quick, stream=sys.stderr)
    profile = PROFILES["quick" if options.quick else "default"]
    frameworks = parse_names(options.frameworks, list(FRAMEWORKS), "framework")
    datasets = parse_names(options.datasets, list(DATASETS), "dataset")
    seeds = _count("--seeds", options.seeds, profile.seeds, minimum=1)
    trials = _count("--trials", options.trials, profile.trials, minimum=0)
    cells = select_cells(profile, frameworks, datasets)
    if not cells:
        raise ConfigError(
            "no bench cell matches the given --frameworks and --datasets; cells: "
            + ", ".join(cell.key for cell in CELLS)
        )
    ensure_writable(out)
    skipped = unavailable(cells)
    for key, why in skipped.items():
        print(f"labelkeep bench: skipping {key}: {why}", file=sys.stderr)
    runnable = [cell for cell in cells if cell.key not in skipped]
    if not runnable:
        print("labelkeep bench: nothing to run: every selected cell is skipped", file=sys.stderr)
        return ALL_FAILED
    methods, notes = _methods(trials)
    settings = _settings(profile, runnable, methods, seeds, trials)
    record = _record(settings, out, options.resume)
    record.skipped, record.notes = skipped, notes
    from labelkeep_plugins.bench.session import run_bench

    return run_bench(record, {c.key: c for c in runnable}, out, _command_words(options))


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


def _methods(trials: int) -> tuple[tuple[str, ...], list[str]]:
    """plain, perturbed plain (the noise floor), default, tuned (unless --trials 0), online
    (only if such a tuner is registered)."""
    from labelkeep_plugins.plugins import tuner_factories

    methods, notes = [PLAIN, PERTURBED, DEFAULT], []
    if trials > 0:
        methods.append(TUNED)
    else:
        notes.append("no tuned row: --trials 0")
    if ONLINE in tuner_factories():
        methods.append(ONLINE)
    else:
        notes.append(
            "no online row: no tuner named 'online' is registered (labelkeep plugins lists "
            "the tuners); it appears here once one is"
        )
    return tuple(methods), notes


def _settings(
    profile: Profile, cells: list[Any], methods: tuple[str, ...], seeds: int, trials: int
) -> BenchSettings:
    return BenchSettings(
        profile=profile.name,
        cells=tuple(cell.key for cell in cells),
        methods=methods,
        seeds=tuple(range(seeds)),
        trials=trials,
        epochs=profile.epochs,
        pretrain_epochs=profile.pretrain_epochs,
        validation_seeds=tuple(
            range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + profile.validation_seeds)
        ),
    )


def _record(settings: BenchSettings, out: Path, resume: bool) -> BenchRecord:
    stored = load_record(out)
    if stored is None:
        if resume:
            print(f"labelkeep bench: nothing to resume in {out}; starting", file=sys.stderr)
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
    words = ["--quick"] if options.quick else []
    for flag in ("frameworks", "datasets"):
        if getattr(options, flag):
            words += [f"--{flag}", *getattr(options, flag)]
    for flag in ("seeds", "trials"):
        if getattr(options, flag) is not None:
            words += [f"--{flag}", str(getattr(options, flag))]
    return [*words, "--out", options.out]
