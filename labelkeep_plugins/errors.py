"""Errors and warnings raised by labelkeep.

Every error says what is wrong and how to fix it; they all derive from
`LabelkeepError` so a caller can catch labelkeep's problems without catching
its own code's.
"""

from __future__ import annotations


class LabelkeepError(Exception):
    """Base class of every error labelkeep raises on purpose."""


class ConfigError(LabelkeepError, ValueError):
    """A configuration value, key or file is invalid."""


class LogitsError(LabelkeepError, TypeError):
    """A model output cannot be read as a (batch, classes) logits tensor."""


class ShapeMismatchError(LabelkeepError, ValueError):
    """Student and reference logits do not have the same shape."""


class NonFiniteError(LabelkeepError, FloatingPointError):
    """The reference produced NaN or infinite logits."""


class MissingReferenceError(LabelkeepError, RuntimeError):
    """The loss needs reference logits but has neither a captured forward nor explicit ones."""


class SnapshotError(LabelkeepError, RuntimeError):
    """The reference cannot be copied from the model."""


class PluginError(LabelkeepError, RuntimeError):
    """A plugin failed to load or registered something invalid."""


class LabelkeepWarning(UserWarning):
    """Something labelkeep noticed that may not be what the user wants."""
