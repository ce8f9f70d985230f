"""Tests for the configuration: defaults, validation messages, the YAML file and its lookup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labelkeep_plugins import hookimpl, plugins
from labelkeep_plugins.config import (
    DEFAULT_TEMPERATURE,
    DEFAULT_WEIGHTS,
    Config,
    FocalConfig,
    LossConfig,
    load_config,
    read_config_file,
)
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.loss.terms import LossTerm


def test_defaults():
    config = Config()
    assert config.loss.weights == dict(DEFAULT_WEIGHTS)
    assert config.loss.weights["ce"] > 0  # the ground truth keeps its weight by default
    assert config.loss.temperature == DEFAULT_TEMPERATURE > 0
    assert config.loss.focal is None  # no focal weights unless asked for
    assert config.logits is None
    assert config.strict is False and config.train_mode_only is True
    assert config.tuner == "catchup"  # auto mode holds the teacher back while the student lags
    assert config.disabled_adapters == ()
    assert Config.from_dict(None) == config
    assert Config.from_dict({}) == config
    assert LossConfig.from_value(None) == config.loss


def test_round_trip():
    config = Config.from_dict(
        {
            "loss": {
                "weights": {"ce": 0.5, "kd": 2, "hard": 0.25},
                "temperature": 4,
                "focal": {"base": 0.5, "scale": 3},
            },
            "logits": 0,
            "train_mode_only": False,
            "tuner": "fixed",
            "report": "report.json",
            "strict": True,
            "disabled_adapters": ["nni"],
        }
    )
    assert config.loss.weights == {"ce": 0.5, "kd": 2.0, "hard": 0.25}
    assert isinstance(config.loss.temperature, float)
    assert config.disabled_adapters == ("nni",)
    data = config.to_dict()
    assert Config.from_dict(data) == config
    assert Config.from_dict(data).to_dict() == data
    default = Config().to_dict()
    assert Config.from_dict(default) == Config()


def test_focal_can_be_switched_off():
    config = Config.from_dict({"loss": {"focal": None}})
    assert config.loss.focal is None
    assert Config.from_dict(config.to_dict()) == config
    assert LossConfig(focal=False).focal is None
    # `focal: true` in YAML switches the default focal weights on, as `false` switches them off.
    assert Config.from_dict({"loss": {"focal": True}}).loss.focal == FocalConfig()


def test_round_trip_through_yaml_file(tmp_path: Path):
    import yaml

    config = Config.from_dict({"loss": {"weights": {"kd": 1.0, "logit_mse": 0.1}}, "logits": "out"})
    path = tmp_path / "labelkeep.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    assert read_config_file(path) == config


def _error(data) -> str:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    return str(info.value)


@pytest.mark.parametrize("value", [0, -1.5, "2", True, None, float("nan"), float("inf"), [2]])
def test_bad_temperature(value):
    message = _error({"loss": {"temperature": value}})
    assert "temperature" in message
    assert repr(value) in message
    assert "> 0" in message


def test_negative_weight():
    message = _error({"loss": {"weights": {"ce": 1.0, "kd": -0.5}}})
    assert "kd" in message and "-0.5" in message and ">= 0" in message


@pytest.mark.parametrize("value", ["1", True, None])
def test_non_number_weight(value):
    message = _error({"loss": {"weights": {"kd": value}}})
    assert "weights.kd" in message and repr(value) in message


def test_all_weights_zero():
    message = _error({"loss": {"weights": {"ce": 0, "kd": 0.0}}})
    assert "weights" in message and "0" in message and "> 0" in message


@pytest.mark.parametrize("weights", [{}, [1.0], "kd"])
def test_weights_must_be_a_non_empty_mapping(weights):
    message = _error({"loss": {"weights": weights}})
    assert "weights" in message and repr(weights) in message and "kd" in message


def _terms_error(data) -> str:
    config = Config.from_dict(data)  # plain data: the names are the registry's to check
    with pytest.raises(ConfigError) as info:
        plugins.check_terms(config.loss)
    return str(info.value)


def test_unknown_term_lists_known_terms():
    message = _terms_error({"loss": {"weights": {"ce": 1.0, "kdd": 1.0}}})
    assert "'kdd'" in message
    for name in ("ce", "kd", "hard", "logit_mse"):
        assert name in message


def test_the_loss_composer_refuses_an_unknown_term():
    from labelkeep_plugins.loss.composer import LossComposer

    with pytest.raises(ConfigError, match=r"unknown loss term 'kdd'.*known terms: ce, fm"):
        LossComposer(LossConfig(weights={"kdd": 1.0}))
    composer = LossComposer(LossConfig())
    with pytest.raises(ConfigError, match="'kdd'"):
        composer.configure(LossConfig(weights={"kdd": 1.0}))
    assert composer.loss == LossConfig()  # the refused weights changed nothing


def test_a_configuration_never_loads_plugins(monkeypatch):
    """config.py is plain data: building one must not import entry points (nor torch's terms)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the configuration loaded plugins")

    monkeypatch.setattr(plugins, "load_plugins", refuse)
    monkeypatch.setattr(plugins, "collect", refuse)
    config = Config.from_dict({"loss": {"weights": {"kd": 0.5, "cosine": 1.0}}, "tuner": "fixed"})
    assert config.loss.weights == {"ce": 1.0, "kd": 0.5, "cosine": 1.0}
    assert Config.from_dict(config.to_dict()) == config


def test_unknown_top_level_key_lists_allowed_keys():
    message = _error({"los": {}})
    assert "'los'" in message
    for key in ("loss", "logits", "strict", "tuner", "report", "disabled_adapters"):
        assert key in message


def test_unknown_key_in_loss():
    message = _error({"loss": {"temprature": 2}})
    assert "'temprature'" in message and "loss" in message
    for key in ("weights", "temperature", "focal"):
        assert key in message


def test_unknown_key_in_focal():
    message = _error({"loss": {"focal": {"base": 1, "weight": 2}}})
    assert "'weight'" in message and "focal" in message
    assert "base" in message and "scale" in message


def test_focal_both_zero():
    message = _error({"loss": {"focal": {"base": 0, "scale": 0}}})
    assert "focal.base" in message and "focal.scale" in message and "0" in message


def test_focal_negative():
    message = _error({"loss": {"focal": {"base": 1, "scale": -2}}})
    assert "focal.scale" in message and "-2" in message


@pytest.mark.parametrize("value", [1.5, [0], {"key": "logits"}, True])
def test_logits_selector_of_bad_type(value):
    message = _error({"logits": value})
    assert "logits" in message and repr(value) in message
    assert "index" in message


@pytest.mark.parametrize("value", ["logits", 0, -1])
def test_logits_selector_ok(value):
    assert Config.from_dict({"logits": value}).logits == value


@pytest.mark.parametrize("key", ["strict", "train_mode_only"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_non_bool_switch(key, value):
    message = _error({key: value})
    assert key in message and repr(value) in message and "true or false" in message


@pytest.mark.parametrize(
    ("data", "word"),
    [
        ({"loss": [1, 2]}, "loss"),
        ({"loss": {"focal": 3}}, "focal"),
        ({"tuner": ""}, "tuner"),
        ({"report": 3}, "report"),
        ({"disabled_adapters": "nni"}, "disabled_adapters"),
        ({"disabled_adapters": ["nni", 3]}, "disabled_adapters"),
    ],
)
def test_other_bad_values(data, word):
    assert word in _error(data)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        Config.from_dict({"strict": "no"})


def test_with_overrides_is_validated():
    loss = LossConfig()
    assert loss.with_overrides(temperature=5).temperature == 5.0
    with pytest.raises(ConfigError):
        loss.with_overrides(temperature=-1)


# --- the YAML file -------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_loads(tmp_path: Path):
    path = write(
        tmp_path / "conf.yaml",
        """
loss:
  weights: {ce: 0.2, kd: 0.8, hard: 0.1}
  temperature: 4
  focal: {base: 1.0, scale: 2.0}
logits: logits
strict: true
""",
    )
    config = load_config(path)
    assert config.loss.weights == {"ce": 0.2, "kd": 0.8, "hard": 0.1}
    assert config.loss.temperature == 4.0
    assert config.loss.focal == FocalConfig(1.0, 2.0)
    assert config.logits == "logits" and config.strict is True
    assert load_config(str(path)) == config


def test_empty_file_gives_defaults(tmp_path: Path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


def test_malformed_yaml_names_file_and_line(tmp_path: Path):
    path = write(
        tmp_path / "bad.yaml", "loss:\n  temperature: 2\n  weights: {ce: 1\nstrict: true\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 4" in message


def test_malformed_yaml_indentation(tmp_path: Path):
    path = write(tmp_path / "bad.yaml", "loss:\n  temperature: 2\n    weights: 1\n")
    with pytest.raises(ConfigError, match=r"line 3"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("3\n", "int")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text, kind):
    path = write(tmp_path / "list.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and kind in str(info.value)


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_file_that_is_not_utf8(tmp_path: Path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"loss:\n  temperature: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary\.yaml"):
        load_config(path)


def test_directory_instead_of_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=str(tmp_path.name)):
        load_config(tmp_path)


def test_invalid_value_in_file_names_file_and_key(tmp_path: Path):
    path = write(tmp_path / "conf.yaml", "loss:\n  temperature: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "temperature" in str(info.value)
    assert "-1" in str(info.value)


def test_yaml_is_loaded_safely(tmp_path: Path):
    path = write(tmp_path / "evil.yaml", "loss: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml"):
        load_config(path)


# --- where the file comes from ---------------------------------------------------------------


@pytest.fixture
def three_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return {
        "explicit": write(tmp_path / "explicit.yaml", "loss: {temperature: 1.5}\n"),
        "env": write(tmp_path / "env.yaml", "loss: {temperature: 2.5}\n"),
        "cwd": write(cwd / "labelkeep.yaml", "loss: {temperature: 3.5}\n"),
    }


def test_precedence_explicit_path_wins(three_files, monkeypatch):
    monkeypatch.setenv("LABELKEEP_CONFIG", str(three_files["env"]))
    assert load_config(three_files["explicit"]).loss.temperature == 1.5


def test_precedence_env_over_cwd(three_files, monkeypatch):
    monkeypatch.setenv("LABELKEEP_CONFIG", str(three_files["env"]))
    assert load_config().loss.temperature == 2.5


def test_precedence_cwd_file(three_files):
    assert load_config().loss.temperature == 3.5


def test_precedence_defaults(three_files):
    three_files["cwd"].unlink()
    assert load_config() == Config()


def test_empty_env_is_ignored(three_files, monkeypatch):
    monkeypatch.setenv("LABELKEEP_CONFIG", "")
    assert load_config().loss.temperature == 3.5


def test_env_pointing_to_missing_file_is_an_error(three_files, monkeypatch, tmp_path):
    monkeypatch.setenv("LABELKEEP_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config()


# --- terms from plugins ----------------------------------------------------------------------


class CosinePlugin:
    @hookimpl
    def labelkeep_register_terms(self, register):
        register(
            LossTerm(
                "cosine",
                lambda inputs: 1 - torch.cosine_similarity(inputs.student, inputs.reference, dim=1),
            )
        )


def test_plugin_term_becomes_a_valid_weight_key():
    assert "'cosine'" in _terms_error({"loss": {"weights": {"cosine": 1.0}}})
    plugins.get_plugin_manager().register(CosinePlugin(), name="cosine-plugin")
    config = Config.from_dict({"loss": {"weights": {"ce": 1.0, "cosine": 0.5}}})
    plugins.check_terms(config.loss)
    assert config.loss.weights == {"ce": 1.0, "cosine": 0.5}
    # ...and the error for an unknown term now lists it among the known ones.
    assert "cosine" in _terms_error({"loss": {"weights": {"nope": 1.0}}})


def test_ce_keeps_weight_one_unless_given() -> None:
    """Adding a term must not silently drop the user's own loss."""
    assert LossConfig(weights={"kd": 2.0}).weights == {"ce": 1.0, "kd": 2.0}
    assert LossConfig(weights={"ce": 0.0, "kd": 1.0}).weights == {"ce": 0.0, "kd": 1.0}


def test_reference_cache_option() -> None:
    assert Config().reference_cache is None
    on = Config.from_dict({"reference_cache": True})
    assert on.reference_cache is not None and on.reference_cache.max_mb == 64.0
    assert Config.from_dict(on.to_dict()) == on
    with pytest.raises(ConfigError, match=r"reference_cache\.max_mb must be a number > 0"):
        Config.from_dict({"reference_cache": {"max_mb": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        Config.from_dict({"reference_cache": {"size": 3}})
