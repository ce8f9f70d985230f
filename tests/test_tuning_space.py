"""The NNI search space: generation, validation, parameter set -> LossConfig, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelkeep_plugins.cli.main import main
from labelkeep_plugins.config import FocalConfig, LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.tuning.space import (
    default_search_space,
    parameters_to_loss,
    read_search_space,
    validate_search_space,
)


def test_default_space_covers_the_teacher_terms_temperature_and_focal() -> None:
    space = default_search_space()
    assert set(space) == {"kd", "hard", "hinge", "logit_mse", "temperature", "focal_scale"}
    assert space["temperature"] == {"_type": "loguniform", "_value": [1.0, 8.0]}
    assert validate_search_space(space) == space


def test_terms_select_the_space() -> None:
    assert set(default_search_space(["hard"])) == {"hard", "focal_scale"}  # no T for hard
    assert set(default_search_space(["ce", "kd"])) == {"ce", "kd", "temperature", "focal_scale"}
    assert default_search_space(["ce"])["ce"]["_value"][0] > 0  # never all weights zero


def test_unknown_term_lists_the_registered_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"'nope'.*registered terms: ce, fm, hard, hinge, kd, logit_mse"
    ):
        default_search_space(["nope"])


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"temperature": {"_type": "uniform", "_value": [0, 4]}}, r"'temperature'.*> 0"),
        ({"temperature": {"_type": "choice", "_value": [2, -1]}}, r"'temperature'.*> 0"),
        ({"kd": {"_type": "uniform", "_value": [-1, 1]}}, r"'kd'.*weights must stay >= 0"),
        ({"hard": {"_type": "quniform", "_value": [-0.5, 1, 0.5]}}, r"'hard'.*>= 0"),
        ({"focal_scale": {"_type": "randint", "_value": [-2, 3]}}, r"'focal_scale'.*>= 0"),
        ({"kd": {"_type": "normal", "_value": [1, 0.5]}}, r"'kd'.*normal types"),
        ({"kd": {"_type": "loguniform", "_value": [0, 1]}}, r"'kd'.*low > 0"),
        ({"kd": {"_type": "uniform", "_value": [2, 1]}}, r"'kd'.*low must be below high"),
        ({"kd": {"_type": "uniform", "_value": [0, 1, 2]}}, r"'kd'.*\[low, high\]"),
        ({"kd": {"_type": "quniform", "_value": [0, 1, 0]}}, r"'kd'.*step q"),
        ({"kd": {"_type": "uniform", "_value": ["a", 1]}}, r"'kd'.*list of numbers"),
        ({"kd": [0, 1]}, r"'kd' must be"),
        ({"lr": {"_type": "uniform", "_value": [0, 1]}}, r"unknown key 'lr'.*allowed keys"),
        ({}, "non-empty JSON object"),
    ],
)
def test_invalid_spaces_name_the_key(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_search_space(space)


def test_space_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "space.json"
    with pytest.raises(ConfigError, match="cannot read search space file"):
        read_search_space(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"space\.json.*not valid JSON"):
        read_search_space(path)
    path.write_text(json.dumps({"temperature": {"_type": "uniform", "_value": [-1, 2]}}))
    with pytest.raises(ConfigError, match=r"space\.json.*'temperature'"):
        read_search_space(path)


def test_parameters_override_only_what_they_name() -> None:
    base = LossConfig(weights={"ce": 0.5, "kd": 1.0}, temperature=2.0, focal=None)
    loss = parameters_to_loss({"kd": 0.3, "hard": 0.2, "temperature": 4.0}, base)
    assert loss.weights == {"ce": 0.5, "kd": 0.3, "hard": 0.2}
    assert loss.temperature == 4.0 and loss.focal is None


def test_focal_parameters_build_focal_weights() -> None:
    loss = parameters_to_loss({"focal_scale": 2.5}, LossConfig(focal=None))
    assert loss.focal == FocalConfig(base=1.0, scale=2.5)
    loss = parameters_to_loss({"focal_base": 0.5}, LossConfig())
    assert loss.focal == FocalConfig(base=0.5, scale=1.0)


def test_unknown_parameters_are_errors_unless_ignored() -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter 'lr'"):
        parameters_to_loss({"lr": 0.1}, LossConfig())
    assert (
        parameters_to_loss({"lr": 0.1, "kd": 2}, LossConfig(), ignore_unknown=True).weights["kd"]
        == 2.0
    )


def test_invalid_parameter_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"parameter set .*temperature must be a number > 0"):
        parameters_to_loss({"temperature": 0}, LossConfig())
    with pytest.raises(ConfigError, match=r"weights\.kd must be a finite number >= 0"):
        parameters_to_loss({"kd": -1}, LossConfig())


def test_search_space_command_writes_and_checks(tmp_path: Path, capsys) -> None:
    out = tmp_path / "space.json"
    assert main(["search-space", "--terms", "kd,hard", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"kd", "hard", "temperature", "focal_scale"}
    assert main(["search-space", "--check", str(out)]) == 0
    assert main(["search-space"]) == 0
    assert "logit_mse" in json.loads(capsys.readouterr().out)
    out.write_text(json.dumps({"kd": {"_type": "uniform", "_value": [-1, 1]}}))
    assert main(["search-space", "--check", str(out)]) == 2
    assert "'kd'" in capsys.readouterr().err


def test_describe_space_names_the_searched_keys_and_the_fixed_weights() -> None:
    from labelkeep_plugins.tuning.space import describe_space

    text = describe_space(default_search_space(), LossConfig())
    assert text.startswith(
        "searching focal_scale, hard, hinge, kd, logit_mse, temperature, each drawn on its own; "
        "kept at the base configuration: ce=1 (ce, your own loss, is searched only when named"
    )
    assert "[0.1, 1.0]" in text
    searched = describe_space(default_search_space(["ce", "kd"]), LossConfig())
    assert searched == "searching ce, focal_scale, kd, temperature, each drawn on its own"
