"""Auto mode's two plugin hooks: a plugin adjusts the starting config, and hears the session start.

NNI-trial mode joins activation this way (no import from activation up into the tools).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from labelkeep_plugins import plugins
from labelkeep_plugins.config import Config
from labelkeep_plugins.errors import PluginError
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.plugins import DEFAULT_PLUGINS, load_plugins
from labelkeep_plugins.zero_code import auto


class Doubles:
    """Doubles kd's weight; it registers first, so it is called after later plugins."""

    @hookimpl
    def labelkeep_auto_config(self, config: Config) -> Config:
        weights = dict(config.loss.weights)
        weights["kd"] = 2 * weights.get("kd", 0.0)
        return replace(config, loss=replace(config.loss, weights=weights))


class SetsKd:
    @hookimpl
    def labelkeep_auto_config(self, config: Config) -> Config:
        weights = {**config.loss.weights, "kd": 0.25}
        return replace(config, loss=replace(config.loss, weights=weights))


class LeavesIt:
    seen: list[Config]

    def __init__(self) -> None:
        self.seen = []

    @hookimpl
    def labelkeep_auto_config(self, config: Config) -> None:
        self.seen.append(config)


def test_the_nni_trial_mode_is_a_built_in_plugin() -> None:
    assert "labelkeep_plugins.tuning.nni_trial" in DEFAULT_PLUGINS
    pm = load_plugins()
    names = {pm.get_name(impl.plugin) for impl in pm.hook.labelkeep_session_started.get_hookimpls()}
    assert "labelkeep_plugins.tuning.nni_trial" in names


def test_auto_config_implementations_are_chained_in_call_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    monkeypatch.delenv("NNI_TRIAL_COMMAND_CHANNEL", raising=False)
    pm = load_plugins()
    pm.register(Doubles(), name="doubles")
    pm.register(SetsKd(), name="sets-kd")  # later registered: pluggy calls it first
    watcher = LeavesIt()
    pm.register(watcher, name="watcher")
    config = auto.adjusted_by_plugins(Config())
    assert config.loss.weights["kd"] == 0.5  # 0.25 set, then doubled: not 0.25, not 2x default
    assert watcher.seen == [Config()]  # called first, with the original; None changes nothing


def test_a_failing_auto_config_plugin_is_a_failure_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken:
        @hookimpl
        def labelkeep_auto_config(self, config: Config) -> Config:
            raise RuntimeError("no weights today")

    load_plugins().register(Broken(), name="broken")
    with pytest.raises(RuntimeError, match="no weights today"):
        auto.adjusted_by_plugins(Config())


def test_an_auto_config_plugin_returning_something_else_is_named() -> None:
    class ReturnsADict:
        @hookimpl
        def labelkeep_auto_config(self, config: Config) -> dict[str, Any]:
            return {"tuner": "fixed"}

    load_plugins().register(ReturnsADict(), name="returns-a-dict")
    with pytest.raises(PluginError, match=r"'returns-a-dict'.*returned dict; return a Config"):
        auto.adjusted_by_plugins(Config())


class Listens:
    def __init__(self) -> None:
        self.sessions: list[Any] = []

    @hookimpl
    def labelkeep_session_started(self, session: Any) -> None:
        self.sessions.append(session)


class FakeSession:
    def __init__(self, strict: bool = False) -> None:
        self.config = Config(strict=strict)


def test_plugins_hear_the_session_start() -> None:
    listener = Listens()
    load_plugins().register(listener, name="listens")
    session = FakeSession()
    auto._tell_plugins_started(session)  # type: ignore[arg-type]
    assert listener.sessions == [session]


def test_a_failing_session_started_plugin_costs_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        @hookimpl
        def labelkeep_session_started(self, session: Any) -> None:
            raise RuntimeError("cannot listen")

    load_plugins().register(Broken(), name="broken")
    with caplog.at_level(logging.WARNING, logger="labelkeep"):
        auto._tell_plugins_started(FakeSession())  # type: ignore[arg-type]
    assert "a plugin failed when the session started (RuntimeError: cannot listen)" in caplog.text
    with pytest.raises(RuntimeError, match="cannot listen"):
        auto._tell_plugins_started(FakeSession(strict=True))  # type: ignore[arg-type]


def test_plugins_reset_between_tests_keeps_the_built_ins() -> None:
    plugins.reset_plugins()
    pm = load_plugins()
    assert all(pm.get_plugin(name) is not None for name in DEFAULT_PLUGINS)
