"""labelkeep: keep a compressed classifier's labels the same as its reference's.

Public surface:

* :class:`LabelPreservingLoss`: the drop-in replacement for ``nn.CrossEntropyLoss()``;
* :func:`attach`: add the loss to a training loop labelkeep does not own;
* :func:`instrument` / :func:`uninstrument` / :func:`instrumented`: zero-code activation;
* :func:`snapshot_reference`: the frozen reference (teacher) taken before compression;
* :func:`agreement` / :class:`AgreementMeter`: how far the compressed model agrees with it;
* :class:`Config` / :func:`load_config`: the validated configuration;
* :func:`get_plugin_manager` / :func:`load_plugins` and ``hookimpl``: the plugin host.

Names are imported on first use, so ``labelkeep run`` starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from labelkeep_plugins._version import __version__

_EXPORTS: dict[str, str] = {
    "AgreementMeter": "metrics",
    "AgreementReport": "metrics",
    "agreement": "metrics",
    "Config": "config",
    "FocalConfig": "config",
    "LossConfig": "config",
    "load_config": "config",
    "ConfigError": "errors",
    "LabelkeepError": "errors",
    "LabelkeepWarning": "errors",
    "LogitsError": "errors",
    "MissingReferenceError": "errors",
    "NonFiniteError": "errors",
    "PluginError": "errors",
    "ShapeMismatchError": "errors",
    "SnapshotError": "errors",
    "hookimpl": "hookspecs",
    "InjectionHandle": "injector",
    "attach": "injector",
    "current_session": "zero_code.instrument",
    "instrument": "zero_code.instrument",
    "instrumented": "zero_code.instrument",
    "uninstrument": "zero_code.instrument",
    "as_logits": "loss.logits",
    "LabelPreservingLoss": "injector.dropin",
    "get_plugin_manager": "plugins",
    "load_plugins": "plugins",
    "checksum": "reference.snapshot",
    "snapshot_reference": "reference.snapshot",
    "LossTerm": "loss.terms",
    "TermInputs": "loss.terms",
}

__all__ = [
    "AgreementMeter",
    "AgreementReport",
    "Config",
    "ConfigError",
    "FocalConfig",
    "InjectionHandle",
    "LabelPreservingLoss",
    "LabelkeepError",
    "LabelkeepWarning",
    "LogitsError",
    "LossConfig",
    "LossTerm",
    "MissingReferenceError",
    "NonFiniteError",
    "PluginError",
    "ShapeMismatchError",
    "SnapshotError",
    "TermInputs",
    "__version__",
    "agreement",
    "as_logits",
    "attach",
    "checksum",
    "current_session",
    "get_plugin_manager",
    "hookimpl",
    "instrument",
    "instrumented",
    "load_config",
    "load_plugins",
    "snapshot_reference",
    "uninstrument",
]

if TYPE_CHECKING:
    from labelkeep_plugins.config import Config, FocalConfig, LossConfig, load_config
    from labelkeep_plugins.errors import (
        ConfigError,
        LabelkeepError,
        LabelkeepWarning,
        LogitsError,
        MissingReferenceError,
        NonFiniteError,
        PluginError,
        ShapeMismatchError,
        SnapshotError,
    )
    from labelkeep_plugins.hookspecs import hookimpl

    # From the defining module: ``labelkeep_plugins.injector.attach`` is also a submodule
    # name, which mypy would otherwise bind here in place of the function.
    from labelkeep_plugins.injector.attach import InjectionHandle, attach
    from labelkeep_plugins.injector.dropin import LabelPreservingLoss
    from labelkeep_plugins.loss.logits import as_logits
    from labelkeep_plugins.loss.terms import LossTerm, TermInputs
    from labelkeep_plugins.metrics import AgreementMeter, AgreementReport, agreement
    from labelkeep_plugins.plugins import get_plugin_manager, load_plugins
    from labelkeep_plugins.reference.snapshot import checksum, snapshot_reference
    from labelkeep_plugins.zero_code.instrument import (
        current_session,
        instrument,
        instrumented,
        uninstrument,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'labelkeep_plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"labelkeep_plugins.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
