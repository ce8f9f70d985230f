"""In-process activation: ``instrument()``, ``uninstrument()`` and ``instrumented()``.

Exactly what ``labelkeep run`` does inside each process it starts: every
registered adapter whose framework is installed in a supported version is armed,
and patches its framework when the user's code first imports it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from labelkeep_plugins.config import Config, load_config
from labelkeep_plugins.env import DISABLED_ADAPTERS_ENV
from labelkeep_plugins.errors import PluginError
from labelkeep_plugins.log import logger
from labelkeep_plugins.plugins import (
    check_terms,
    collect,
    disabled_adapter_names,
    load_plugins,
    unknown_name_lines,
)
from labelkeep_plugins.zero_code.adapters import Adapter, check_compatibility
from labelkeep_plugins.zero_code.importhooks import ImportCallback, cancel, when_imported
from labelkeep_plugins.zero_code.session import AdapterStatus, Session

_lock = threading.RLock()
_session: Session | None = None
_instrumented: list[Adapter] = []
_waiting: list[ImportCallback] = []


def current_session() -> Session | None:
    """The active session, or None when labelkeep is not instrumented."""
    return _session


def instrument(config: Config | None = None) -> Session:
    """Arm every usable adapter; idempotent (a second call returns the active session)."""
    global _session
    with _lock:
        if _session is not None:
            return _session
        config = config if config is not None else load_config()
        pm = load_plugins(strict=config.strict)
        check_terms(config.loss)  # before anything is patched: the names are plugins' terms
        session = Session(config)
        _session = session
        try:
            pm.hook.labelkeep_configure.call_historic(kwargs={"config": config})
            adapters = registered_adapters()
            for adapter in adapters:
                _arm(session, adapter)
            _warn_unknown_disabled(session, [adapter.name for adapter in adapters])
        except BaseException:
            uninstrument()
            raise
        return session


def uninstrument() -> None:
    """Undo every adapter's patches in reverse order and detach every injector; idempotent."""
    global _session
    with _lock:
        for callback in _waiting:
            cancel(callback)
        _waiting.clear()
        while _instrumented:
            _instrumented.pop().uninstrument()
        if _session is not None:
            _session.detach_all()
        _session = None


@contextmanager
def instrumented(config: Config | None = None) -> Iterator[Session]:
    """``with instrumented(config) as session:`` instrument for the block, then undo."""
    session = instrument(config)
    try:
        yield session
    finally:
        uninstrument()


def registered_adapters() -> list[Adapter]:
    """Adapters from every plugin, checked against the :class:`Adapter` contract."""
    adapters: list[Adapter] = []
    for plugin, (adapter, *_rest) in collect("labelkeep_register_adapters"):
        if not isinstance(adapter, Adapter):
            raise PluginError(
                f"plugin {plugin!r} registered {adapter!r}, which lacks the Adapter "
                "attributes (name, framework, supported, module, instrument, "
                "uninstrument)"
            )
        adapters.append(adapter)
    return adapters


def _arm(session: Session, adapter: Adapter) -> None:
    compatibility = check_compatibility(adapter)
    status = AdapterStatus(adapter.name, adapter.framework, compatibility.installed, "skipped")
    session.adapters[adapter.name] = status
    if _is_disabled(session.config, adapter.name):
        status.state, status.reason = "disabled", "switched off by configuration"
        return
    if not compatibility.ok:
        status.reason = compatibility.reason
        _skip_line(session, adapter, compatibility.reason, compatibility.installed)
        return
    status.state, status.reason = "waiting-for-import", f"armed; waiting for {adapter.module}"

    def activate(_module: Any) -> None:
        with session.guard(adapter.name):
            try:
                adapter.instrument(session)
            except BaseException:
                with contextlib.suppress(Exception):
                    adapter.uninstrument()  # leave nothing half-patched
                raise
            _instrumented.append(adapter)
            if status.state != "failed":
                status.state, status.reason = "active", f"patched on import of {adapter.module}"

    _waiting.append(activate)
    when_imported(adapter.module, activate)


def _is_disabled(config: Config, name: str) -> bool:
    from_environment = disabled_adapter_names()
    return (
        from_environment is None
        or name in from_environment
        or "*" in config.disabled_adapters
        or name in config.disabled_adapters
    )


def _warn_unknown_disabled(session: Session, known: list[str]) -> None:
    """A disabled-adapter name that matches no adapter switches nothing off: say so, once."""
    sources = {
        DISABLED_ADAPTERS_ENV: disabled_adapter_names() or set(),
        "disabled_adapters": set(session.config.disabled_adapters),
    }
    for where, names in sources.items():
        for line in unknown_name_lines(
            where, names, known, kind="adapter", effect="switches nothing off"
        ):
            session.warn("configuration", line)


def _skip_line(session: Session, adapter: Adapter, reason: str, installed: str | None) -> None:
    """One line per skipped adapter; strict mode refuses an installed but unsupported version."""
    if session.config.strict and installed is not None:
        raise PluginError(f"adapter {adapter.name!r}: {reason}")
    logger.warning(f"adapter {adapter.name!r} skipped: {reason}")
