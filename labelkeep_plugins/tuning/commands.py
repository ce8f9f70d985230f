"""The ``labelkeep tune`` and ``labelkeep search-space`` subcommands (argument parsing only)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.log import logger
from labelkeep_plugins.zero_code.runner import COMMAND_NOT_FOUND

if TYPE_CHECKING:
    from labelkeep_plugins.config import Config

DEFAULT_OUT = "labelkeep-tune"


def add_commands(commands: Any) -> None:
    """Register both subcommands on the ``labelkeep`` parser's subparsers."""
    _add_tune(commands)
    _add_search_space(commands)


def _add_tune(commands: Any) -> None:
    from labelkeep_plugins.tuning.algorithms import ALGORITHMS

    tune = commands.add_parser(
        "tune",
        help="search the loss weights: N runs of a command, NNI's tuners in-process",
        description="Run CMD once with plain recovery, then N times with loss weights that an "
        "NNI tuner proposes; rank by mismatches with the reference (negative flips break ties) "
        "at no less accuracy than plain recovery; write DIR/results.json and DIR/best.yaml. "
        "Rerunning with the same --out resumes. "
        "Example: labelkeep tune --trials 8 -- python train.py",
    )
    tune.add_argument("--trials", type=int, required=True, help="weight settings to try")
    tune.add_argument("--algorithm", help=f"{' | '.join(ALGORITHMS)} (default tpe)")
    tune.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    tune.add_argument("--seed", type=int, help="seed of the search (default: random, stored)")
    tune.add_argument(
        "--tolerance",
        type=float,
        help="accuracy the tuned run may lose against plain recovery, as a fraction "
        "(0.005 = half a point; default 0)",
    )
    _add_metric_options(tune)
    tune.add_argument("--config", help="base labelkeep YAML whose loss the trials replace")
    _add_space_options(tune)
    tune.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    tune.set_defaults(handler=_tune)


def _add_metric_options(tune: argparse.ArgumentParser) -> None:
    tune.add_argument(
        "--metric",
        metavar="REGEX",
        help="constrain a metric the command prints instead of the run report's accuracy: a "
        "Python regex with one capturing group around the number, searched in each trial's "
        "output (stdout+stderr, ^/$ match per line); the last match counts. With "
        "--metric-mode max a value above 1 is read as a percentage (91.5 = 0.915). "
        r"Example: --metric 'val acc: ([0-9.]+)%%'",
    )
    tune.add_argument(
        "--metric-mode",
        choices=("max", "min"),
        help="max (default): higher is better, keep it >= plain's - tolerance; min (e.g. a "
        "loss, used as printed): keep it <= plain's + tolerance, in the metric's units",
    )


def _add_search_space(commands: Any) -> None:
    space = commands.add_parser(
        "search-space",
        help="write an NNI search space over the loss weights",
        description="Write the NNI search space (JSON) of labelkeep's loss: the registered "
        "teacher terms' weights, the temperature and the focal scale, each drawn on its own. "
        "ce (your own loss) is searched only when named (--terms ce,...); a weight the space "
        "leaves out keeps the configuration's value. Use it as an NNI experiment's "
        "searchSpaceFile, or edit it and give it to labelkeep tune --search-space.",
    )
    space.add_argument("--terms", help="comma-separated terms (default: every teacher term)")
    space.add_argument("--out", help="write to this file (default: standard output)")
    space.add_argument("--check", metavar="FILE", help="only validate an existing space file")
    space.set_defaults(handler=_search_space)


def _add_space_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--search-space", help="NNI search space JSON (labelkeep search-space)")
    parser.add_argument("--terms", help="comma-separated terms to search (default: all teacher)")


def _base_config(path: str | None) -> Config:
    """The ``--config`` file every trial starts from, checked before the first trial runs."""
    from labelkeep_plugins.config import load_config
    from labelkeep_plugins.zero_code.runner import check_against_plugins

    config = load_config(path)
    if path is not None:
        check_against_plugins(config, path)
    return config


def _tune(options: argparse.Namespace) -> int:
    from labelkeep_plugins.tuning.algorithms import ALGORITHMS
    from labelkeep_plugins.tuning.search import TuneRequest, tune

    command = _command(options.command)
    if options.algorithm is not None and options.algorithm not in ALGORITHMS:
        raise ConfigError(
            f"unknown --algorithm {options.algorithm!r}; valid algorithms: {', '.join(ALGORITHMS)}"
        )
    if shutil.which(command[0]) is None:
        logger.error(f"command not found: {command[0]!r} (check the name and PATH)")
        return COMMAND_NOT_FOUND
    request = TuneRequest(
        command=tuple(command),
        trials=options.trials,
        out=Path(options.out),
        search_space=_space(options),
        base=_base_config(options.config),
        algorithm=options.algorithm,
        seed=options.seed,
        tolerance=options.tolerance,
        metric=options.metric,
        metric_mode=options.metric_mode,
    )
    return tune(request)


def _search_space(options: argparse.Namespace) -> int:
    from labelkeep_plugins.tuning.space import read_search_space

    if options.check:
        read_search_space(options.check)
        logger.info(f"{options.check}: a valid labelkeep search space")
        return 0
    from labelkeep_plugins.config import LossConfig
    from labelkeep_plugins.tuning.space import describe_space

    space = _space(options)
    text = space_json(space)
    logger.info(describe_space(space, LossConfig()))
    if options.out:
        Path(options.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def space_json(space: dict[str, Any]) -> str:
    """One key per line: easy to read and to edit by hand."""
    lines = [f"  {json.dumps(key)}: {json.dumps(spec)}" for key, spec in space.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _space(options: argparse.Namespace) -> dict[str, Any]:
    from labelkeep_plugins.tuning.space import default_search_space, read_search_space

    if getattr(options, "search_space", None):
        if options.terms:
            raise ConfigError("give either --search-space or --terms, not both")
        return read_search_space(options.search_space)
    terms = [t.strip() for t in options.terms.split(",") if t.strip()] if options.terms else None
    return default_search_space(terms)


def _command(words: list[str]) -> list[str]:
    command = words[1:] if words and words[0] == "--" else list(words)
    if not command:
        raise ConfigError("no command given; usage: labelkeep tune --trials N -- CMD [ARGS...]")
    return command
