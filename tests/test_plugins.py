"""Tests for the plugin manager: built-ins, third-party terms, entry points and switches."""

from __future__ import annotations

import textwrap
import types
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from labelkeep_plugins import hookimpl, plugins
from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.errors import ConfigError, LabelkeepWarning, PluginError
from labelkeep_plugins.loss.composer import LossComposer
from labelkeep_plugins.loss.terms import LossTerm
from labelkeep_plugins.tuners.base import FixedTuner, make_tuner

BUILTIN_NAMES = {"ce", "kd", "hard", "hinge", "logit_mse", "fm"}


def absolute_error(inputs):
    return (inputs.student - inputs.reference).abs().sum(dim=1)


class AbsPlugin:
    @hookimpl
    def labelkeep_register_terms(self, register):
        register(LossTerm("abs_error", absolute_error))


class ClashingPlugin:
    @hookimpl
    def labelkeep_register_terms(self, register):
        register(LossTerm("kd", absolute_error))


def test_builtins_are_registered():
    terms = plugins.loss_terms()
    assert set(terms) == BUILTIN_NAMES
    assert all(isinstance(term, LossTerm) and term.name == name for name, term in terms.items())
    assert set(plugins.tuner_factories()) == {"catchup", "fixed", "softadapt"}
    assert plugins.tuner_factories()["fixed"] is FixedTuner


def test_make_tuner():
    tuner = make_tuner(Config(tuner="fixed"))
    assert isinstance(tuner, FixedTuner)
    assert tuner.loss_config() == Config().loss
    tuner.load_state_dict(tuner.state_dict())
    with pytest.raises(ConfigError, match=r"'nope'.*fixed"):
        make_tuner(Config(tuner="nope"))


def test_load_plugins_is_idempotent():
    first = plugins.load_plugins()
    registered = list(first.get_plugins())
    second = plugins.load_plugins()
    assert second is first is plugins.get_plugin_manager()
    assert list(second.get_plugins()) == registered
    assert len(first.hook.labelkeep_register_terms.get_hookimpls()) == 1
    assert set(plugins.loss_terms()) == BUILTIN_NAMES  # no duplicate registration error


def test_reset_gives_a_fresh_manager():
    first = plugins.load_plugins()
    first.register(AbsPlugin(), name="abs")
    plugins.reset_plugins()
    second = plugins.load_plugins()
    assert second is not first
    assert "abs_error" not in plugins.loss_terms()


def test_third_party_term_is_usable_by_composer():
    plugins.get_plugin_manager().register(AbsPlugin(), name="abs-plugin")
    assert set(plugins.loss_terms()) == BUILTIN_NAMES | {"abs_error"}
    composer = LossComposer(LossConfig(weights={"ce": 1.0, "abs_error": 0.5}, focal=None))
    generator = torch.Generator().manual_seed(0)
    student, reference = (
        torch.randn(6, 4, generator=generator),
        torch.randn(6, 4, generator=generator),
    )
    targets = torch.randint(0, 4, (6,), generator=generator)
    value, terms = composer.total(student, reference, targets)
    expected = F.cross_entropy(student, targets) + 0.5 * (student - reference).abs().sum(1).mean()
    torch.testing.assert_close(value, expected)
    assert set(terms) == {"ce", "abs_error"}


def test_module_as_plugin():
    module = types.ModuleType("labelkeep_test_module_plugin")

    @hookimpl
    def labelkeep_register_terms(register):
        register(LossTerm("from_module", absolute_error))

    module.labelkeep_register_terms = labelkeep_register_terms
    plugins.get_plugin_manager().register(module)
    assert "from_module" in plugins.loss_terms()


def test_name_clash_names_both_plugins():
    plugins.load_plugins().register(ClashingPlugin(), name="clashing-plugin")
    with pytest.raises(PluginError) as info:
        plugins.loss_terms()
    message = str(info.value)
    assert "'kd'" in message
    assert "clashing-plugin" in message
    assert "labelkeep_plugins.loss.builtin_terms" in message


def test_registering_a_non_term_is_an_error():
    class Bad:
        @hookimpl
        def labelkeep_register_terms(self, register):
            register("kd")

    plugins.get_plugin_manager().register(Bad(), name="bad-plugin")
    with pytest.raises(PluginError, match="bad-plugin"):
        plugins.loss_terms()


def test_tuner_registered_twice_is_an_error():
    class Tuners:
        @hookimpl
        def labelkeep_register_tuners(self, register):
            register("fixed", FixedTuner)

    plugins.get_plugin_manager().register(Tuners(), name="second-fixed")
    with pytest.raises(PluginError, match=r"'fixed'") as info:
        plugins.tuner_factories()
    assert "second-fixed" in str(info.value)
    assert "labelkeep_plugins.tuners.builtin" in str(info.value)


# --- entry points ----------------------------------------------------------------------------

GOOD_PLUGIN = """
from labelkeep_plugins import hookimpl
from labelkeep_plugins.loss.terms import LossTerm

LOADS = []
LOADS.append(1)


@hookimpl
def labelkeep_register_terms(register):
    register(LossTerm("good_term", lambda inputs: inputs.student.pow(2).mean(dim=1)))
"""

BAD_PLUGIN = """
raise ImportError("labelkeep test: this plugin is broken on purpose")
"""


@pytest.fixture
def fake_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request):
    """Two entry points in group 'labelkeep': 'good' loads, 'bad' raises on import."""
    suffix = request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    good_module, bad_module = f"lk_good_{suffix}", f"lk_bad_{suffix}"
    (tmp_path / f"{good_module}.py").write_text(textwrap.dedent(GOOD_PLUGIN), encoding="utf-8")
    (tmp_path / f"{bad_module}.py").write_text(textwrap.dedent(BAD_PLUGIN), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = [
        EntryPoint("good", good_module, "labelkeep"),
        EntryPoint("bad", bad_module, "labelkeep"),
        EntryPoint("other_group", bad_module, "not-labelkeep"),
    ]
    calls = []

    def entry_points(**selection):
        calls.append(selection)
        group = selection.get("group")
        return [ep for ep in found if group is None or ep.group == group]

    monkeypatch.setattr(plugins, "entry_points", entry_points)
    return types.SimpleNamespace(calls=calls, good=good_module, bad=bad_module)


def test_entry_points_good_loaded_bad_skipped_with_warning(fake_entry_points):
    with pytest.warns(LabelkeepWarning, match="'bad'") as record:
        pm = plugins.load_plugins()
    assert len([w for w in record if issubclass(w.category, LabelkeepWarning)]) == 1
    assert "this plugin is broken on purpose" in str(record[0].message)
    assert pm.get_plugin("good") is not None
    assert pm.get_plugin("bad") is None
    assert "good_term" in plugins.loss_terms()
    failures = plugins.plugin_failures()
    assert [failure.name for failure in failures] == ["bad"]
    assert "ImportError" in failures[0].error
    # Loading again neither re-imports nor warns again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugins.load_plugins() is pm
    assert len(fake_entry_points.calls) == 1
    assert len(plugins.plugin_failures()) == 1


def test_entry_points_strict_raises(fake_entry_points):
    with pytest.raises(PluginError, match="'bad'") as info:
        plugins.load_plugins(strict=True)
    assert isinstance(info.value.__cause__, ImportError)


def test_strict_after_a_lenient_load_raises_for_what_it_skipped(fake_entry_points):
    """A lenient load first (a drop-in loss, the term check) must not defuse --strict."""
    from labelkeep_plugins import Config

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Config(loss={"weights": {"kd": 1.0}})  # plain data: loads no plugin
    assert fake_entry_points.calls == []
    with pytest.warns(LabelkeepWarning, match="'bad'"):
        plugins.check_terms(Config().loss)  # resolving the names loads every plugin, leniently
    with pytest.raises(PluginError, match=r"plugin 'bad' from .* failed to load"):
        plugins.load_plugins(strict=True)
    with pytest.raises(PluginError, match="'bad'"):
        from labelkeep_plugins import instrument

        instrument(Config(strict=True))
    assert plugins.load_plugins() is plugins.get_plugin_manager()  # lenient: still fine


def test_autoload_disabled_keeps_builtins(fake_entry_points, monkeypatch):
    monkeypatch.setenv("LABELKEEP_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset_plugins()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = plugins.load_plugins(strict=True)
    assert fake_entry_points.calls == []
    assert pm.get_plugin("good") is None
    assert set(plugins.loss_terms()) == BUILTIN_NAMES
    assert plugins.plugin_failures() == []


def test_allow_list(fake_entry_points, monkeypatch):
    monkeypatch.setenv("LABELKEEP_PLUGINS", "good")
    plugins.reset_plugins()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = plugins.load_plugins(strict=True)  # 'bad' is never imported
    assert pm.get_plugin("good") is not None
    assert pm.get_plugin("bad") is None
    assert set(plugins.loss_terms()) == BUILTIN_NAMES | {"good_term"}
    assert plugins.plugin_failures() == []


def test_allow_list_with_spaces_and_unknown_names(fake_entry_points, monkeypatch):
    monkeypatch.setenv("LABELKEEP_PLUGINS", " nothing , good ,")
    pm = plugins.load_plugins()
    assert pm.get_plugin("good") is not None and pm.get_plugin("bad") is None
    with pytest.raises(PluginError, match="'nothing'"):  # under strict, the unknown name stops it
        plugins.load_plugins(strict=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a,b", {"a", "b"}),
        (" a , b ,", {"a", "b"}),
        ("", set()),
        ("*", None),
        ("a,*", None),
    ],
)
def test_disabled_adapter_names(monkeypatch, value, expected):
    monkeypatch.setenv("LABELKEEP_DISABLED_ADAPTERS", value)
    assert plugins.disabled_adapter_names() == expected


def test_disabled_adapter_names_unset():
    assert plugins.disabled_adapter_names() == set()


def test_an_unknown_allow_list_name_is_said_once_with_the_known_ones(
    fake_entry_points, monkeypatch, capsys
):
    monkeypatch.setenv("LABELKEEP_PLUGINS", "doesnotexist")
    pm = plugins.load_plugins()
    plugins.load_plugins()
    plugins.loss_terms()
    err = capsys.readouterr().err
    assert pm.get_plugin("good") is None and pm.get_plugin("bad") is None
    lines = [line for line in err.splitlines() if "doesnotexist" in line]
    assert lines == [
        "labelkeep: LABELKEEP_PLUGINS names 'doesnotexist', which is no installed plugin, so it "
        "loads nothing; known plugins: bad, good"
    ]
    selection = plugins.plugin_selection()
    assert selection.unknown == ["doesnotexist"] and selection.left_out == ["bad", "good"]


def test_an_unknown_allow_list_name_is_an_error_under_strict(fake_entry_points, monkeypatch):
    """--strict with LABELKEEP_PLUGINS=typo must not run with no adapter, answering exit 0."""
    monkeypatch.setenv("LABELKEEP_PLUGINS", "goood")
    with pytest.raises(PluginError, match=r"names .goood., which is no installed plugin"):
        plugins.load_plugins(strict=True)
    plugins.reset_plugins()
    plugins.load_plugins()  # lenient first: one line, and on
    with pytest.raises(PluginError, match="'goood'"):
        plugins.load_plugins(strict=True)  # then strict: not answered from the cache


def test_only_the_unknown_names_of_an_allow_list_are_named(fake_entry_points, monkeypatch, capsys):
    monkeypatch.setenv("LABELKEEP_PLUGINS", " nothing , good ,")
    assert plugins.load_plugins().get_plugin("good") is not None
    err = capsys.readouterr().err
    assert "names 'nothing'" in err and "'good'" not in err
    assert plugins.plugin_selection().left_out == ["bad"]


def test_a_known_allow_list_and_no_allow_list_say_nothing(fake_entry_points, monkeypatch, capsys):
    monkeypatch.setenv("LABELKEEP_PLUGINS", "good")
    plugins.load_plugins()
    assert "LABELKEEP_PLUGINS" not in capsys.readouterr().err
    assert plugins.plugin_selection().unknown == []


def test_unknown_name_lines_are_shared_by_every_list_of_names():
    lines = plugins.unknown_name_lines(
        "X", ["b", "a", "*", "zz"], ["a"], kind="adapter", effect="does nothing"
    )
    assert lines == [
        "X names 'b', which is no installed adapter, so it does nothing; known adapters: a",
        "X names 'zz', which is no installed adapter, so it does nothing; known adapters: a",
    ]
    assert plugins.unknown_name_lines("X", ["a"], [], kind="plugin", effect="e") == [
        "X names 'a', which is no installed plugin, so it e; known plugins: none"
    ]
