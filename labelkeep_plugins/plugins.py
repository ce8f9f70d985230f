"""The plugin manager: built-ins, entry-point plugins and the registries they fill.

Loading is idempotent. Environment switches:

* ``LABELKEEP_DISABLE_PLUGIN_AUTOLOAD`` (any non-empty value): load no entry-point plugin.
* ``LABELKEEP_PLUGINS``: comma-separated allow-list of entry-point names to load (a name
  that matches no installed plugin is named on stderr, once, with the installed ones).
* ``LABELKEEP_DISABLED_ADAPTERS``: comma-separated adapter names not to activate (``*`` = all).
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from labelkeep_plugins import hookspecs
from labelkeep_plugins.env import ALLOW_LIST_ENV, AUTOLOAD_OFF_ENV, DISABLED_ADAPTERS_ENV
from labelkeep_plugins.errors import LabelkeepWarning, PluginError
from labelkeep_plugins.log import logger
from labelkeep_plugins.loss.terms import LossTerm, check_term_names

if TYPE_CHECKING:
    from labelkeep_plugins.config import LossConfig

ENTRY_POINT_GROUP = "labelkeep"

#: labelkeep's own terms, tuners and reporter: registered first, like any other plugin.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "labelkeep_plugins.loss.builtin_terms",
    "labelkeep_plugins.tuners.builtin",
    "labelkeep_plugins.zero_code.report",
    "labelkeep_plugins.tuning.nni_trial",  # inert outside an NNI trial
)


@dataclass(frozen=True)
class PluginFailure:
    """An entry-point plugin that could not be loaded, and why."""

    name: str
    distribution: str
    error: str

    @property
    def message(self) -> str:
        return (
            f"labelkeep: plugin {self.name!r} from {self.distribution!r} failed to load "
            f"({self.error}); it is skipped. Uninstall or fix it, or leave it out "
            f"with {ALLOW_LIST_ENV}."
        )


@dataclass(frozen=True)
class EntryPointSelection:
    """Which installed entry-point plugins the environment switches let load, and which not.

    Kept so that ``labelkeep plugins`` can say *why* a plugin (and its adapters) is absent
    instead of calling it not installed.
    """

    autoload_off: bool  # LABELKEEP_DISABLE_PLUGIN_AUTOLOAD was set: no entry point was read
    allow: frozenset[str] | None  # LABELKEEP_PLUGINS; None when unset
    installed: tuple[str, ...]  # every entry point in the group (empty when autoload is off)

    def allows(self, name: str) -> bool:
        return not self.autoload_off and (self.allow is None or name in self.allow)

    @property
    def left_out(self) -> list[str]:
        """Installed plugins that the allow-list keeps out."""
        return sorted(name for name in self.installed if not self.allows(name))

    @property
    def unknown(self) -> list[str]:
        """Allow-list names that match no installed plugin (they load nothing)."""
        return sorted((self.allow or frozenset()) - set(self.installed))


_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None
_loaded = False
_failures: list[PluginFailure] = []
_distributions: dict[str, str] = {}  # entry-point plugin name -> "distribution version"
_selection: list[EntryPointSelection] = []  # the one of the last load_plugins(), if any


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with labelkeep's hook specs (plugins not loaded yet)."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            _manager.add_hookspecs(hookspecs)
        return _manager


def load_plugins(*, strict: bool = False) -> pluggy.PluginManager:
    """Register the built-ins and the entry-point plugins once; later calls return at once.

    A plugin whose import fails is skipped with a warning (``strict=True`` raises
    :class:`PluginError` instead) and listed by :func:`plugin_failures`. A strict call
    after a lenient one raises for the failures the lenient one skipped, so ``--strict`` is
    never answered from a cache. Under ``strict``, an allow-list name
    (``LABELKEEP_PLUGINS``) that matches no installed plugin is an error too.
    """
    global _loaded
    pm = get_plugin_manager()
    with _lock:
        if _loaded:
            if strict:
                _raise_for_what_was_skipped()
            return pm
        for module_name in DEFAULT_PLUGINS:
            if pm.get_plugin(module_name) is None:
                pm.register(importlib.import_module(module_name), name=module_name)
        _load_entry_points(pm, strict=strict)
        _loaded = True
    return pm


def reset_plugins() -> None:
    """Forget every registered plugin (for tests and for re-reading the environment)."""
    global _manager, _loaded
    with _lock:
        _manager = None
        _loaded = False
        _failures.clear()
        _distributions.clear()
        _selection.clear()


def plugin_distribution(name: str) -> str | None:
    """``"distribution version"`` of an entry-point plugin; None for built-ins and others."""
    return _distributions.get(name)


def plugin_failures() -> list[PluginFailure]:
    """Entry-point plugins that failed to load in this process."""
    return list(_failures)


def plugin_selection() -> EntryPointSelection:
    """What the environment let :func:`load_plugins` import (loads the plugins first)."""
    load_plugins()
    return _selection[0]


def unknown_name_lines(
    where: str, names: Iterable[str], known: Iterable[str], *, kind: str, effect: str
) -> list[str]:
    """One line per name in a user's list that matches nothing known, with the known names.

    Such a name is nearly always a typo, and it does nothing at all: without this line the
    user cannot tell it from a name that worked.
    """
    known = sorted(set(known))
    return [
        f"{where} names {name!r}, which is no installed {kind}, so it {effect}; "
        f"known {kind}s: {', '.join(known) or 'none'}"
        for name in sorted(set(names) - set(known) - {"*"})
    ]


def _load_entry_points(pm: pluggy.PluginManager, *, strict: bool) -> None:
    """Load the allowed entry points; record what was found and name unknown allowed names."""
    allow = _name_list(os.environ.get(ALLOW_LIST_ENV))
    frozen = None if allow is None else frozenset(allow)
    if os.environ.get(AUTOLOAD_OFF_ENV):
        _selection[:] = [EntryPointSelection(True, frozen, ())]
        return
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    selection = EntryPointSelection(False, frozen, tuple(ep.name for ep in found))
    _selection[:] = [selection]
    for line in _unknown_allowed(selection):
        if strict:
            raise PluginError(line)
        logger.warning(line)
    for entry_point in found:
        if selection.allows(entry_point.name):
            _load_entry_point(pm, entry_point, strict=strict)


def _unknown_allowed(selection: EntryPointSelection) -> list[str]:
    """A line for each allow-listed name that matches no installed plugin."""
    return unknown_name_lines(
        ALLOW_LIST_ENV,
        selection.unknown,
        selection.installed,
        kind="plugin",
        effect="loads nothing",
    )


def _raise_for_what_was_skipped() -> None:
    """A strict call after a lenient load: what that load let pass is an error now."""
    if _failures:
        raise PluginError(_failures[0].message)
    for selection in _selection:
        for line in _unknown_allowed(selection):
            raise PluginError(line)


def _load_entry_point(pm: pluggy.PluginManager, entry_point: EntryPoint, *, strict: bool) -> None:
    if pm.get_plugin(entry_point.name) is not None:
        return
    distribution = entry_point.dist.name if entry_point.dist else "?"
    try:
        pm.register(entry_point.load(), name=entry_point.name)
        if entry_point.dist is not None:
            _distributions[entry_point.name] = f"{distribution} {entry_point.dist.version}"
    except Exception as exc:
        failure = PluginFailure(entry_point.name, distribution, f"{type(exc).__name__}: {exc}")
        if strict:
            raise PluginError(failure.message) from exc
        _failures.append(failure)
        warnings.warn(failure.message, LabelkeepWarning, stacklevel=3)


def _name_list(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def disabled_adapter_names() -> set[str] | None:
    """Adapter names the user switched off; ``None`` means all of them (``*``)."""
    names = _name_list(os.environ.get(DISABLED_ADAPTERS_ENV)) or set()
    return None if "*" in names else names


def collect(hook_name: str) -> list[tuple[str, tuple[Any, ...]]]:
    """Call a ``register``-style hook once per plugin: ``[(plugin name, registered args), ...]``."""
    pm = load_plugins()
    found: list[tuple[str, tuple[Any, ...]]] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():

        def register(*args: Any, _plugin: str = impl.plugin_name) -> None:
            found.append((_plugin, args))

        impl.function(register=register)
    return found


def loss_terms() -> dict[str, LossTerm]:
    """Every registered loss term by name; a name registered twice names both plugins."""
    terms: dict[str, LossTerm] = {}
    owners: dict[str, str] = {}
    for plugin, (term, *_rest) in collect("labelkeep_register_terms"):
        if not isinstance(term, LossTerm):
            raise PluginError(
                f"plugin {plugin!r} registered {term!r}; register a LossTerm instance"
            )
        if term.name in terms:
            raise PluginError(
                f"loss term {term.name!r} is registered by both {owners[term.name]!r} and "
                f"{plugin!r}; "
                f"uninstall one of them or rename the term"
            )
        terms[term.name], owners[term.name] = term, plugin
    return terms


def check_terms(loss: LossConfig) -> None:
    """Every term ``loss`` weights is registered (a configuration never reads the registry)."""
    check_term_names(loss.weights, loss_terms())


def tuner_factories() -> dict[str, Callable[..., Any]]:
    """Every registered tuner factory by name (later plugins may not override earlier ones)."""
    factories: dict[str, Callable[..., Any]] = {}
    owners: dict[str, str] = {}
    for plugin, (name, factory) in collect("labelkeep_register_tuners"):
        if name in factories:
            raise PluginError(
                f"tuner {name!r} is registered by both {owners[name]!r} and "
                f"{plugin!r}; uninstall one of them or rename the tuner"
            )
        factories[name], owners[name] = factory, plugin
    return factories
