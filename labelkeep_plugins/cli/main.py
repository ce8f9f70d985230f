"""The ``labelkeep`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from labelkeep_plugins._version import __version__
from labelkeep_plugins.bench.command import add_bench_command
from labelkeep_plugins.errors import LabelkeepError
from labelkeep_plugins.experiments.compare import add_compare_command
from labelkeep_plugins.log import logger
from labelkeep_plugins.tuning.commands import add_commands as add_tuning_commands
from labelkeep_plugins.zero_code.runner import add_run_arguments, run_from_options


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if not hasattr(options, "handler"):
        parser.print_help()
        return 2
    try:
        return int(options.handler(options))
    except LabelkeepError as exc:
        logger.error(f"error: {exc}")
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelkeep",
        description="Keep a compressed classifier's labels the same as its reference's.",
    )
    parser.add_argument("--version", action="version", version=f"labelkeep {__version__}")
    commands = parser.add_subparsers(title="commands")

    demo = commands.add_parser(
        "demo",
        help="prune a classifier and recover it with and without labelkeep",
        description="Train a reference on locally generated data, prune 70% of its weights, "
        "recover it with plain cross-entropy and with LabelPreservingLoss, and "
        "print mismatches with the reference for both.",
    )
    demo.add_argument("--dataset", default="mnist1d", help="mnist1d (default) or digits")
    demo.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    demo.add_argument("--quick", action="store_true", help="one seed, fewer epochs (smoke run)")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser(
        "run",
        help="run a command with labelkeep active (zero code change)",
        description="Run CMD with labelkeep active in every Python process it starts. "
        "Example: labelkeep run --report report.json -- python train.py",
    )
    add_run_arguments(run)
    run.set_defaults(handler=run_from_options)

    listing = commands.add_parser("plugins", help="list loss terms, tuners and plugins")
    listing.set_defaults(handler=_plugins)
    add_tuning_commands(commands)
    add_bench_command(commands)
    add_compare_command(commands)
    return parser


def _demo(options: argparse.Namespace) -> int:
    from labelkeep_plugins.cli.demo import DemoSettings, run_demo

    if options.seeds < 1:
        raise LabelkeepError(f"--seeds must be at least 1, got {options.seeds}")
    settings = DemoSettings(dataset=options.dataset, seeds=tuple(range(options.seeds)))
    if options.quick:
        settings = DemoSettings(
            dataset=options.dataset, seeds=(0,), reference_epochs=8, recovery_epochs=2
        )
    run_demo(settings)
    return 0


def _plugins(options: argparse.Namespace) -> int:
    from labelkeep_plugins.cli.inventory import inventory_lines

    for line in inventory_lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
