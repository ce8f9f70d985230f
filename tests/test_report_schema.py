"""The run report keeps to its shipped JSON Schema, and the schema keeps to the report's types.

Real reports are validated: one from an instrumented training, and the inactive report of a
bad auto-mode config, both as written to disk. The schema has to reject broken reports.
Every TypedDict of ``report_schema`` is compared with its ``$defs`` entry, keys and JSON
types alike, and so is the README's table of the report's keys.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import jsonschema
import pytest
import torch
from conftest import perturbed
from torch import nn

from labelkeep_plugins import budget
from labelkeep_plugins.config import Config
from labelkeep_plugins.env import AUTO_ENV, CONFIG_ENV, REPORT_ENV, ROOT_PID_ENV, STRICT_ENV
from labelkeep_plugins.zero_code import auto, report_schema
from labelkeep_plugins.zero_code.instrument import instrumented
from labelkeep_plugins.zero_code.report import labelkeep_run_finished
from labelkeep_plugins.zero_code.report_schema import (
    ActiveRunReport,
    AdapterEntry,
    AgreementFigures,
    InactiveRunReport,
    LossPaths,
    MismatchSpread,
    RecoveryBudgetEntry,
    ReferenceCacheEntry,
    ReferenceEntry,
    RunReport,
)

README = Path(__file__).resolve().parents[1] / "README.md"
#: Each ``$defs`` entry of the schema and the TypedDict it describes.
DEFS: dict[str, type] = {
    "active_report": ActiveRunReport,
    "inactive_report": InactiveRunReport,
    "reference": ReferenceEntry,
    "adapter": AdapterEntry,
    "loss_paths": LossPaths,
    "mismatch_spread": MismatchSpread,
    "agreement": AgreementFigures,
    "recovery_budget": RecoveryBudgetEntry,
    "reference_cache": ReferenceCacheEntry,
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded = report_schema.report_schema()  # the copy shipped as package data
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def errors(schema: dict[str, Any], report: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(report)]


def train_and_evaluate(tmp_path: Path) -> tuple[ActiveRunReport, dict[str, Any]]:
    """A real instrumented run: the report as returned, and as the built-in reporter wrote it."""
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    student = perturbed(reference, scale=0.5)
    config = Config(reference_cache={"max_mb": 1})  # so the report has a cache entry too
    with instrumented(config) as session:
        session.reference_for(student, framework="test", where="here")
        session.attach(student)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
        data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(2)]
        for _epoch in range(3):
            student.train()
            for x, y in data:
                optimizer.zero_grad()
                nn.functional.cross_entropy(student(x), y).backward()
                optimizer.step()
            student.eval()
            with torch.no_grad():
                for x, y in data:  # a loss on the batch gives the pass its labels
                    nn.functional.cross_entropy(student(x), y)
        report = session.report()
    path = tmp_path / "report.json"
    labelkeep_run_finished(report=report, path=path)
    return report, json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def trained(tmp_path: Path) -> tuple[ActiveRunReport, dict[str, Any]]:
    return train_and_evaluate(tmp_path)


@pytest.fixture
def inactive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, Any]]:
    """Auto mode with a bad config: the inactive report written to disk, and its config file."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "labelkeep.yaml"
    config.write_text("loss:\n  temperature: 0\n")
    for name, value in {
        AUTO_ENV: "1",
        CONFIG_ENV: str(config),
        REPORT_ENV: str(tmp_path / "r.json"),
        ROOT_PID_ENV: str(os.getpid()),
    }.items():
        monkeypatch.setenv(name, value)
    for name in (STRICT_ENV, "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    auto.activate_from_environment()
    return config, json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))


# --- real reports are valid -----------------------------------------------------------------


def test_a_trained_run_report_is_valid(schema: dict[str, Any], trained: tuple[Any, Any]) -> None:
    report, written = trained
    assert errors(schema, written) == []
    assert errors(schema, report) == []  # the Python object too, before JSON
    assert written == json.loads(json.dumps(report))  # the reporter wrote it unchanged
    # The run filled the nested parts the schema describes, so they were checked too.
    assert written["active"] is True and written["training_steps_with_loss"] == 6
    assert (
        written["agreement"]["samples"] == 32 and written["agreement"]["negative_flips"] is not None
    )
    [verdict] = written["recovery_budget"]
    assert verdict["passes_used"] == 3 and verdict["slope_per_pass"] is not None
    assert len(written["references"]) == 1 and len(written["reference_cache"]) == 1
    assert written["adapters"] and written["tuner"]["name"] == "catchup"


def test_an_inactive_report_is_valid(schema: dict[str, Any], inactive: tuple[Path, Any]) -> None:
    config, written = inactive
    assert errors(schema, written) == []
    assert written["active"] is False and written["config_file"] == str(config)
    assert "temperature" in written["error"]


def test_an_inactive_report_without_a_config_file_is_valid(schema: dict[str, Any]) -> None:
    report = auto.inactive_report("LabelkeepError: boom", None)
    assert errors(schema, json.loads(json.dumps(report))) == []


# --- the schema rejects broken reports ------------------------------------------------------


def _drop(report: dict[str, Any], key: str) -> None:
    del report[key]


BREAKAGES = {
    "a count as a string": lambda r: r.update(training_steps_with_loss="6"),
    "a missing required key": lambda r: _drop(r, "agreement"),
    "an unknown key": lambda r: r.update(agreements=None),
    "an inactive-only key": lambda r: r.update(error="boom"),
    "active as a string": lambda r: r.update(active="true"),
    "a float count in the agreement": lambda r: r["agreement"].update(samples=32.5),
    "an unknown adapter state": lambda r: r["adapters"][0].update(state="sleeping"),
    "an unknown budget status": lambda r: r["recovery_budget"][0].update(status="dropping"),
    "a reference without its checksum": lambda r: _drop(r["references"][0], "checksum"),
    "a tuner state without its name": lambda r: _drop(r["tuner"], "name"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_report_is_rejected(
    schema: dict[str, Any], trained: tuple[Any, Any], breakage: str
) -> None:
    report = copy.deepcopy(trained[1])
    BREAKAGES[breakage](report)
    assert errors(schema, report)


def test_a_broken_inactive_report_is_rejected(
    schema: dict[str, Any], inactive: tuple[Path, Any]
) -> None:
    report = copy.deepcopy(inactive[1])
    assert errors(schema, {**report, "active": True})  # an active report lacks config etc.
    del report["error"]
    assert errors(schema, report)


# --- the TypedDicts and the schema cannot drift apart ---------------------------------------


def test_every_typed_dict_has_its_schema_entry(schema: dict[str, Any]) -> None:
    assert set(schema["$defs"]) == set(DEFS)
    typed_dicts = {
        value
        for name in report_schema.__all__
        if typing.is_typeddict(value := getattr(report_schema, name))
    }
    assert typed_dicts == set(DEFS.values())
    assert set(get_args(RunReport)) == {ActiveRunReport, InactiveRunReport}
    assert [entry["$ref"] for entry in schema["oneOf"]] == [
        "#/$defs/active_report",
        "#/$defs/inactive_report",
    ]


@pytest.mark.parametrize("name", list(DEFS))
def test_the_schema_has_the_keys_and_types_of_the_typed_dict(
    schema: dict[str, Any], name: str
) -> None:
    typed_dict, entry = DEFS[name], schema["$defs"][name]
    hints = get_type_hints(typed_dict)
    assert list(entry["properties"]) == list(hints)  # the same keys, in the same order
    assert set(entry["required"]) == typed_dict.__required_keys__  # type: ignore[attr-defined]
    assert entry["additionalProperties"] is False
    for key, annotation in hints.items():
        assert schema_shape(entry["properties"][key]) == type_shape(annotation), key


def test_the_budget_statuses_are_the_ones_the_budget_gives() -> None:
    statuses = {budget.FALLING, budget.FLAT, budget.RISING, budget.TOO_FEW_PASSES}
    assert set(get_args(report_schema.BudgetStatus)) == {*statuses, budget.NO_PASSES}


def test_the_readme_table_lists_the_schemas_keys(schema: dict[str, Any]) -> None:
    """Every key of the README's table is in the schema, and every top-level key is there."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| key | type | meaning | when present |")
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :])
    rows = [re.fullmatch(r"\| `([a-z_]+)` \|.*", line)[1] for line in table]  # type: ignore[index]
    top_level = {
        key
        for name in ("active_report", "inactive_report")
        for key in schema["$defs"][name]["properties"]
    }
    assert rows and len(rows) == len(set(rows))
    assert set(rows) == top_level


def schema_shape(fragment: dict[str, Any]) -> frozenset[Any]:
    """The JSON types a schema fragment allows, as comparable tuples."""
    if "$ref" in fragment:
        return frozenset({("ref", fragment["$ref"].removeprefix("#/$defs/"))})
    if "anyOf" in fragment:
        return frozenset().union(*(schema_shape(part) for part in fragment["anyOf"]))
    if "const" in fragment and "type" not in fragment:
        return frozenset({("const", fragment["const"])})
    if "enum" in fragment:
        return frozenset({("enum", frozenset(fragment["enum"]))})
    kinds = fragment["type"] if isinstance(fragment["type"], list) else [fragment["type"]]
    shapes: set[Any] = set()
    for kind in kinds:
        if kind == "array":
            shapes.add(("array", schema_shape(fragment["items"])))
        elif kind == "object":
            values = fragment.get("additionalProperties")
            shapes.add(("object", schema_shape(values) if isinstance(values, dict) else "any"))
        else:
            shapes.add((kind,))
    return frozenset(shapes)


SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


def type_shape(annotation: Any) -> frozenset[Any]:
    """The JSON types a TypedDict annotation allows, in the terms of :func:`schema_shape`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if typing.is_typeddict(annotation):
        [name] = [name for name, typed_dict in DEFS.items() if typed_dict is annotation]
        return frozenset({("ref", name)})
    if origin in (Union, types.UnionType):
        return frozenset().union(*(type_shape(arg) for arg in args))
    if origin is Literal:
        if len(args) == 1 and isinstance(args[0], bool):
            return frozenset({("const", args[0])})
        return frozenset({("enum", frozenset(args))})
    if origin is list:
        return frozenset({("array", type_shape(args[0]))})
    if origin is dict:
        assert args[0] is str, annotation
        return frozenset({("object", "any" if args[1] is Any else type_shape(args[1]))})
    return frozenset({(SCALARS[annotation],)})
