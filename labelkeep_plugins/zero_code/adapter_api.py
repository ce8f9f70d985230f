"""What a framework adapter imports from labelkeep: one module, so that adapters depend on a
surface that is kept stable, not on where each piece lives.

An adapter subclasses :class:`PatchingAdapter`, patches with its :class:`PatchSet`, waits for
its framework with :func:`when_imported`, and hands models to the :class:`Session`.
"""

from __future__ import annotations

from labelkeep_plugins.config import LogitsSelector
from labelkeep_plugins.errors import ConfigError, LabelkeepError, LabelkeepWarning
from labelkeep_plugins.injector.attach import InjectionHandle
from labelkeep_plugins.injector.forward_hook import ForwardHook
from labelkeep_plugins.log import logger
from labelkeep_plugins.loss.logits import as_logits
from labelkeep_plugins.patching import PatchSet
from labelkeep_plugins.reference.snapshot import unwrap_model
from labelkeep_plugins.zero_code.adapters import PatchingAdapter
from labelkeep_plugins.zero_code.importhooks import ImportCallback, cancel, when_imported
from labelkeep_plugins.zero_code.notices import Notices
from labelkeep_plugins.zero_code.session import Session

__all__ = [
    "ConfigError",
    "ForwardHook",
    "ImportCallback",
    "InjectionHandle",
    "LabelkeepError",
    "LabelkeepWarning",
    "LogitsSelector",
    "Notices",
    "PatchSet",
    "PatchingAdapter",
    "Session",
    "as_logits",
    "cancel",
    "logger",
    "unwrap_model",
    "when_imported",
]
