"""What ``labelkeep plugins`` prints: plugins, terms, tuners, adapters and their conflicts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from labelkeep_plugins.env import ALLOW_LIST_ENV, AUTOLOAD_OFF_ENV
from labelkeep_plugins.errors import PluginError
from labelkeep_plugins.plugins import (
    DEFAULT_PLUGINS,
    EntryPointSelection,
    collect,
    disabled_adapter_names,
    load_plugins,
    loss_terms,
    plugin_distribution,
    plugin_failures,
    plugin_selection,
    tuner_factories,
)
from labelkeep_plugins.zero_code.adapters import check_compatibility


def inventory_lines() -> Iterator[str]:
    """Human-readable lines describing everything labelkeep would load in this environment."""
    pm = load_plugins()
    yield "plugins:"
    for name, _plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        origin = plugin_distribution(name) or (
            "built-in" if name in DEFAULT_PLUGINS else "registered in code"
        )
        yield f"  {name} ({origin})"
    for failure in plugin_failures():
        yield f"  {failure.name} ({failure.distribution}): FAILED to load: {failure.error}"
    yield from _selection_lines(plugin_selection())
    yield from _registry_lines()
    yield from _adapter_lines()


def _selection_lines(selection: EntryPointSelection) -> Iterator[str]:
    """Installed plugins the switches keep out (unknown allow-list names go to stderr)."""
    if selection.autoload_off:
        yield f"  (no entry-point plugin loaded: {AUTOLOAD_OFF_ENV} is set)"
    elif selection.left_out:
        yield f"  not loaded ({_allow_text(selection)}): {', '.join(selection.left_out)}"


def _why_no_adapters(selection: EntryPointSelection) -> str:
    """The true reason no adapter is registered: switched off, left out, failed or absent."""
    if selection.autoload_off:
        return f"none loaded ({AUTOLOAD_OFF_ENV} is set)"
    if selection.allow is not None and not set(selection.allow) & set(selection.installed):
        installed = ", ".join(sorted(selection.installed)) or "no plugin is installed"
        return f"none loaded ({_allow_text(selection)} names none of: {installed})"
    failed = [failure.name for failure in plugin_failures()]
    if failed:
        return f"none loaded (failed to load: {', '.join(failed)}; see above)"
    if selection.left_out:
        return f"none loaded ({_allow_text(selection)} leaves out: {', '.join(selection.left_out)})"
    return "none installed"


def _allow_text(selection: EntryPointSelection) -> str:
    return f"{ALLOW_LIST_ENV}={','.join(sorted(selection.allow or ()))}"


def _registry_lines() -> Iterator[str]:
    try:
        terms = loss_terms()
        yield "loss terms:"
        yield from (f"  {name}: {term.description}" for name, term in sorted(terms.items()))
    except PluginError as exc:
        yield f"loss terms: CONFLICT: {exc}"
    try:
        yield "tuners: " + ", ".join(sorted(tuner_factories()))
    except PluginError as exc:
        yield f"tuners: CONFLICT: {exc}"


def _adapter_lines() -> Iterator[str]:
    registered = [(plugin, args[0]) for plugin, args in collect("labelkeep_register_adapters")]
    yield "adapters:" if registered else f"adapters: {_why_no_adapters(plugin_selection())}"
    disabled = disabled_adapter_names()
    by_module: dict[str, list[str]] = defaultdict(list)
    for plugin, adapter in registered:
        compatibility = check_compatibility(adapter)
        installed = compatibility.installed or "not installed"
        state = "ready" if compatibility.ok else f"skipped: {compatibility.reason}"
        if disabled is None or adapter.name in disabled:
            state = "disabled by LABELKEEP_DISABLED_ADAPTERS"
        yield (
            f"  {adapter.name} (plugin {plugin}): {adapter.framework} {installed}, "
            f"supports {adapter.supported}; {state}"
        )
        by_module[adapter.framework].append(adapter.name)
    for framework, names in sorted(by_module.items()):
        if len(names) > 1:
            yield (
                f"  CONFLICT: {', '.join(names)} all patch {framework}; keep one or disable "
                f"the others with LABELKEEP_DISABLED_ADAPTERS"
            )
