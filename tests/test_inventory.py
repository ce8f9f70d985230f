"""``labelkeep plugins``: what is installed, versions, and conflicts."""

from __future__ import annotations

from labelkeep_plugins import LossTerm, hookimpl
from labelkeep_plugins.cli.main import main
from labelkeep_plugins.loss.builtin_terms import hinton_kd
from labelkeep_plugins.plugins import get_plugin_manager, load_plugins


class DuplicateKd:
    @hookimpl
    def labelkeep_register_terms(self, register) -> None:
        register(LossTerm("kd", hinton_kd, description="another kd"))


class SecondNniAdapter:
    name = "nni-fork"
    framework = "nni"
    supported = ">=3.0"
    module = "nni.compression"

    def instrument(self, session) -> None: ...

    def uninstrument(self) -> None: ...


class ForkPlugin:
    @hookimpl
    def labelkeep_register_adapters(self, register) -> None:
        register(SecondNniAdapter())


def test_lists_builtins_terms_and_tuners(capsys) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "labelkeep_plugins.loss.builtin_terms (built-in)" in out
    assert "  kd: Hinton KD" in out
    assert "tuners: catchup, fixed" in out


def test_reports_conflicts_instead_of_failing(capsys) -> None:
    load_plugins()
    get_plugin_manager().register(DuplicateKd(), name="dup-kd")
    get_plugin_manager().register(ForkPlugin(), name="nni-fork")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "loss terms: CONFLICT: loss term 'kd' is registered by both" in out
    assert "nni-fork (plugin nni-fork): nni" in out
    if "  nni (plugin nni)" in out:  # the real NNI adapter is installed alongside
        assert "CONFLICT: nni, nni-fork all patch nni" in out


INSTALLED = ["nni", "torch-pruning", "brevitas"]


def _installed(monkeypatch) -> None:
    """Three installed adapter plugins (never imported: each test keeps them out)."""
    from importlib.metadata import EntryPoint

    from labelkeep_plugins import plugins

    found = [EntryPoint(name, f"labelkeep_{name}", "labelkeep") for name in INSTALLED]
    monkeypatch.setattr(plugins, "entry_points", lambda **selection: found)


def test_an_allow_list_naming_no_installed_plugin_is_not_none_installed(
    monkeypatch, capsys
) -> None:
    _installed(monkeypatch)
    monkeypatch.setenv("LABELKEEP_PLUGINS", "doesnotexist")
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "none installed" not in captured.out
    assert (
        "adapters: none loaded (LABELKEEP_PLUGINS=doesnotexist names none of: "
        "brevitas, nni, torch-pruning)" in captured.out
    )
    assert "  not loaded (LABELKEEP_PLUGINS=doesnotexist): brevitas, nni, torch-pruning" in (
        captured.out
    )
    assert captured.err.count("LABELKEEP_PLUGINS names 'doesnotexist'") == 1


def test_autoload_off_is_not_none_installed(monkeypatch, capsys) -> None:
    _installed(monkeypatch)
    monkeypatch.setenv("LABELKEEP_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "adapters: none loaded (LABELKEEP_DISABLE_PLUGIN_AUTOLOAD is set)" in out
    assert "none installed" not in out


def test_no_adapter_plugin_at_all_is_none_installed(monkeypatch, capsys) -> None:
    from labelkeep_plugins import plugins

    monkeypatch.setattr(plugins, "entry_points", lambda **selection: [])
    assert main(["plugins"]) == 0
    assert "adapters: none installed" in capsys.readouterr().out
