"""Loss settings of your choice over the bench's cells: how the default was chosen.

    python -m labelkeep_plugins.bench.sweep SETTINGS.json [--seeds 0,1,2] [--cells a,b]
                                            [--out DIR] [--jobs 2] [--budget 3]
                                            [--optimizer sgd]

``SETTINGS.json`` maps a name to a labelkeep ``loss`` section, optionally with a
``tuner`` key (``fixed`` unless given), e.g. ``{"plain": {"weights": {"ce": 1.0}},
"catchup": {"tuner": "catchup"}}``. Each setting runs on each cell and seed exactly as a
bench run does (the same scripts, test split, epochs and pretrained checkpoints, which
``--out`` shares between settings), and the figures per seed are printed, then a table of
each setting against ``--baseline`` (``plain``; :mod:`.sweep_table`). Finished runs
are read back, so adding a setting to the file reruns only what is new; a setting whose
configuration changed under the same name runs again (a code change does not: compare
two commits in two ``--out`` folders). ``--budget``
multiplies the script's recovery epochs (the runs of each budget are kept apart).
``--optimizer sgd`` recovers with SGD (momentum 0.9, learning rate 1e-2) instead of the
scripts' Adam, as many of the frameworks' own examples do (its runs are kept apart too).

A setting's ``recovery_seed_offset`` (a whole number, 0 unless given) reseeds the recovery
(its batches and pruning draws) while keeping the same reference: ``{"reseeded": {"weights":
{"ce": 1.0}, "recovery_seed_offset": 1000}}`` against ``plain`` is the spread of plain
recovery itself, a noise floor that, unlike the bench's perturbed row, follows another
trajectory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench import execute
from labelkeep_plugins.bench.cells import CELLS, OPTIMIZERS, PROFILES, Cell, parse_names
from labelkeep_plugins.bench.plan import BenchSettings, RunKey, script_command
from labelkeep_plugins.bench.sweep_table import comparison_table
from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.log import logger
from labelkeep_plugins.plugins import check_terms
from labelkeep_plugins.tuners.base import make_tuner

RESULT_FILE = "figures.json"
SETTINGS_FILE = "settings.json"  # the configuration the figures were measured with
RESEED = "recovery_seed_offset"


@dataclass(frozen=True)
class Setting:
    """One named setting: labelkeep's configuration, and the recovery's seed offset."""

    config: Config
    recovery_seed_offset: int = 0  # 0: the scripts' own recovery seed (--seed + 1)


def settings_from_file(path: Path) -> dict[str, Setting]:
    """Each named setting (validated before anything runs)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a JSON object of name -> loss settings")
    settings = {}
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: setting {name!r} must be a loss section (an object)")
        offset = spec.get(RESEED, 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigError(
                f"{path}: setting {name!r}: {RESEED} must be a whole number >= 0 (0 keeps the "
                f"scripts' own recovery seed), got {offset!r}"
            )
        loss = {key: value for key, value in spec.items() if key not in ("tuner", RESEED)}
        config = Config(loss=LossConfig.from_value(loss), tuner=spec.get("tuner", "fixed"))
        try:  # an unknown term or tuner name fails here, before any run
            check_terms(config.loss)
            make_tuner(config)
        except ConfigError as exc:
            raise ConfigError(f"{path}: setting {name!r}: {exc}") from exc
        settings[name] = Setting(config, offset)
    return settings


def _saved_figures(directory: Path, setting: Setting) -> dict[str, Any] | None:
    """The figures of a finished run of this very configuration, else None (run it).

    A setting renamed or edited in the settings file must not read back the figures of
    what ran under its name before. Code changes are not seen: compare commits with a
    fresh ``--out``.
    """
    saved = directory / RESULT_FILE
    if not saved.exists():
        return None
    settings = directory / SETTINGS_FILE
    if settings.exists() and json.loads(settings.read_text(encoding="utf-8")) != _as_json(setting):
        logger.info(f"sweep: {directory} ran another configuration under this name; rerunning")
        return None
    figures: dict[str, Any] = json.loads(saved.read_text(encoding="utf-8"))
    return figures


def _as_json(setting: Setting) -> Any:
    """The configuration, with the seed offset only when there is one (as runs saved before)."""
    data = json.loads(json.dumps(setting.config.to_dict()))
    return {**data, RESEED: setting.recovery_seed_offset} if setting.recovery_seed_offset else data


def run_one(
    cell: Cell,
    seed: int,
    name: str,
    setting: Setting,
    out: Path,
    budget: int = 1,
    optimizer: str = OPTIMIZERS[0],
) -> dict[str, Any]:
    """The figures of one run (from disk when it already ran), or its error."""
    variant = ("" if budget == 1 else f"/x{budget}") + (
        "" if optimizer == OPTIMIZERS[0] else f"/{optimizer}"
    )
    key = RunKey(f"{cell.key}{variant}", name, seed)
    directory = key.directory(out)
    figures = _saved_figures(directory, setting)
    if figures is not None:
        return figures
    profile = PROFILES["default"]
    settings = BenchSettings(
        "sweep",
        (cell.key,),
        (name,),
        (seed,),
        0,
        profile.epochs * budget,
        profile.pretrain_epochs,
        (),
    )
    command = script_command(cell, [seed], "test", settings, out)
    if optimizer != OPTIMIZERS[0]:
        command += ["--optimizer", optimizer]
    if setting.recovery_seed_offset:
        command += ["--recovery-seed", str(seed + 1 + setting.recovery_seed_offset)]
    result = execute.execute_run(key, command, setting.config, directory)
    figures = result.figures if result.ok else {"error": result.error}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SETTINGS_FILE).write_text(json.dumps(_as_json(setting)), encoding="utf-8")
    (directory / RESULT_FILE).write_text(json.dumps(figures), encoding="utf-8")
    return figures


Results = dict[tuple[str, int, str], dict[str, Any]]


def summary_lines(
    results: Results, cells: Sequence[str], names: Sequence[str], seeds: Sequence[int]
) -> list[str]:
    """Per cell and setting: mean mismatches, each seed's, negative flips and accuracy."""
    lines = []
    for cell in cells:
        lines.append(cell)
        for name in names:
            runs = [results[cell, seed, name] for seed in seeds]
            failed = [run["error"] for run in runs if "error" in run]
            if failed:
                lines.append(f"  {name:16s} failed: {failed[0]}")
                continue
            mismatches = [run["mismatches"] for run in runs]
            flips = sum(run["negative_flips"] or 0 for run in runs) / len(runs)
            accuracy = 100 * sum(run["accuracy"] or 0 for run in runs) / len(runs)
            lines.append(
                f"  {name:16s} mismatches {sum(mismatches) / len(runs):7.1f} {mismatches}  "
                f"negative flips {flips:6.1f}  accuracy {accuracy:5.1f}"
            )
    return lines


def sweep(
    settings: dict[str, Setting],
    cells: Sequence[Cell],
    seeds: Sequence[int],
    out: Path,
    jobs: int,
    budget: int = 1,
    optimizer: str = OPTIMIZERS[0],
) -> Results:
    """Every setting on every cell and seed; the first setting first (it trains the
    checkpoints the others load), the rest ``jobs`` at a time."""
    first = next(iter(settings))
    todo = [(cell, seed, name) for cell in cells for seed in seeds for name in settings]
    results: Results = {}

    def run_job(job: tuple[Cell, int, str]) -> dict[str, Any]:
        cell, seed, name = job
        return run_one(cell, seed, name, settings[name], out, budget, optimizer)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for phase in ([j for j in todo if j[2] == first], [j for j in todo if j[2] != first]):
            figures = list(pool.map(run_job, phase))
            for (cell, seed, name), measured in zip(phase, figures, strict=True):
                results[cell.key, seed, name] = measured
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", type=Path, help="JSON: setting name -> loss section")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated evaluation seeds")
    parser.add_argument("--cells", help="comma-separated cells, e.g. nni/digits (default all)")
    parser.add_argument("--out", type=Path, default=Path("labelkeep-sweep"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--budget", type=int, default=1, help="x the script's recovery epochs")
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=OPTIMIZERS[0],
        help="the scripts' recovery optimizer",
    )
    parser.add_argument(
        "--baseline", default="plain", help="the setting the table compares the others with"
    )
    options = parser.parse_args(argv)
    try:
        settings = settings_from_file(options.settings)
        valid = [cell.key for cell in CELLS]
        keys = parse_names([options.cells] if options.cells else None, valid, "cell")
        seeds = [int(seed) for seed in options.seeds.split(",")]
    except (ConfigError, OSError, ValueError) as exc:
        logger.error(f"sweep: {exc}")
        return 2
    cells = [cell for cell in CELLS if not keys or cell.key in keys]
    results = sweep(
        settings,
        cells,
        seeds,
        options.out,
        options.jobs,
        max(1, options.budget),
        options.optimizer,
    )
    cell_keys = [c.key for c in cells]
    print("\n".join(summary_lines(results, cell_keys, list(settings), seeds)))
    table = comparison_table(results, cell_keys, list(settings), seeds, options.baseline)
    if table:
        print("\n" + "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
