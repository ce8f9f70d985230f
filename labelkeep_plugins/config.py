"""Configuration: one YAML file or a dict, validated into typed, frozen objects.

Where it comes from, first match wins: an explicit path (``--config``), the
``LABELKEEP_CONFIG`` environment variable, ``labelkeep.yaml`` in the working
directory, else the defaults. Only ``yaml.safe_load`` is used. Every error names
the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from labelkeep_plugins.env import CONFIG_ENV
from labelkeep_plugins.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_CONFIG_FILE = "labelkeep.yaml"

# Defaults chosen on the bench (README, "Choosing the default"): the user's loss at full weight,
# so the script's learning rate keeps its meaning, and KD at T 4, where the reference's relative
# logits still say what the labels do not. No focal weights: boosting the samples the reference
# gets right did not cut negative flips in any measured case; adding a hinge on the reference's
# label (the `hinge` term) was mixed over 24 cells. The catch-up tuner (the default
# tuner) holds the KD term back while the student lags behind its reference on the labels.
DEFAULT_WEIGHTS: Mapping[str, float] = {"ce": 1.0, "kd": 1.0}
DEFAULT_TEMPERATURE = 4.0
DEFAULT_FOCAL_BASE = 1.0
DEFAULT_FOCAL_SCALE = 1.0
DEFAULT_TUNER = "catchup"

LogitsSelector = str | int | None
_Section = TypeVar("_Section", bound="DataclassInstance")  # a section is a dataclass
DEFAULT_REFERENCE_CACHE_MB = 64.0


@dataclass(frozen=True)
class FocalConfig:
    """Per-sample weight ``base + scale * 1[reference correct]`` on the teacher terms."""

    base: float = DEFAULT_FOCAL_BASE
    scale: float = DEFAULT_FOCAL_SCALE

    def __post_init__(self) -> None:
        for key in ("base", "scale"):
            _require_non_negative(f"focal.{key}", getattr(self, key))
        if self.base == 0 and self.scale == 0:
            raise ConfigError(
                "focal.base and focal.scale are both 0, which zeroes every teacher "
                "term; set base > 0, or drop 'focal' to weight all samples equally"
            )

    @classmethod
    def from_value(cls, value: Any) -> FocalConfig | None:
        return _optional_section(cls, "focal", value)


SOFTADAPT_VARIANTS = ("original", "normalized", "loss_weighted")
DEFAULT_SOFTADAPT_VARIANT = "loss_weighted"
DEFAULT_SOFTADAPT_BETA = 0.1
DEFAULT_SOFTADAPT_INTERVAL = 20
DEFAULT_MIXUP_ALPHA = 1.0


@dataclass(frozen=True)
class FunctionMatchingConfig:
    """How the ``fm`` term perturbs its copy of the training batch (used while ``fm`` > 0).

    ``mixup_alpha``: the Beta(alpha, alpha) of the mixing coefficient between each input and
    another input of the same batch; ``noise``: the standard deviation of Gaussian noise added
    to the mixed copy, relative to the batch's own standard deviation (0: none).
    """

    mixup_alpha: float = DEFAULT_MIXUP_ALPHA
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not _is_number(self.mixup_alpha) or not self.mixup_alpha > 0:
            raise ConfigError(
                f"function_matching.mixup_alpha must be a number > 0, got {self.mixup_alpha!r}; "
                f"1.0 mixes uniformly (default {DEFAULT_MIXUP_ALPHA})"
            )
        _require_non_negative("function_matching.noise", self.noise)

    @classmethod
    def from_value(cls, value: Any) -> FunctionMatchingConfig:
        return _settings_section(cls, "function_matching", value)


@dataclass(frozen=True)
class SoftAdaptConfig:
    """The SoftAdapt tuner's settings (``tuner: softadapt``; Heydari et al., arXiv 1912.12355).

    ``beta``: the softmax's inverse temperature over the terms' rates of change (0: equal
    weights; > 0 favours the term that falls slowest); ``interval``: training steps averaged
    into one point, and so between two weight updates.
    """

    variant: str = DEFAULT_SOFTADAPT_VARIANT
    beta: float = DEFAULT_SOFTADAPT_BETA
    interval: int = DEFAULT_SOFTADAPT_INTERVAL

    def __post_init__(self) -> None:
        if self.variant not in SOFTADAPT_VARIANTS:
            raise ConfigError(
                f"softadapt.variant must be one of {', '.join(SOFTADAPT_VARIANTS)}, "
                f"got {self.variant!r}"
            )
        if not _is_number(self.beta):
            raise ConfigError(
                f"softadapt.beta must be a finite number, got {self.beta!r}; "
                f"the paper uses 0.1 (default {DEFAULT_SOFTADAPT_BETA})"
            )
        object.__setattr__(self, "beta", float(self.beta))
        if (
            isinstance(self.interval, bool)
            or not isinstance(self.interval, int)
            or (self.interval < 1)
        ):
            raise ConfigError(
                f"softadapt.interval must be a whole number of training steps >= 1, got "
                f"{self.interval!r} (default {DEFAULT_SOFTADAPT_INTERVAL})"
            )

    @classmethod
    def from_value(cls, value: Any) -> SoftAdaptConfig:
        return _settings_section(cls, "softadapt", value)


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms, the KD temperature and the optional focal weights."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    temperature: float = DEFAULT_TEMPERATURE
    focal: FocalConfig | None = None
    function_matching: FunctionMatchingConfig = field(default_factory=FunctionMatchingConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", _checked_weights(self.weights))
        object.__setattr__(self, "focal", FocalConfig.from_value(self.focal))
        object.__setattr__(
            self, "function_matching", FunctionMatchingConfig.from_value(self.function_matching)
        )
        if not _is_number(self.temperature) or not self.temperature > 0:
            raise ConfigError(
                f"temperature must be a number > 0, got {self.temperature!r}; "
                f"typical values are 1 to 8 (default {DEFAULT_TEMPERATURE})"
            )
        object.__setattr__(self, "temperature", float(self.temperature))

    @classmethod
    def from_value(cls, value: Any) -> LossConfig:
        if value is None:
            return cls()
        if isinstance(value, LossConfig):
            return value
        return cls(**_checked_mapping("loss", value, {f.name for f in fields(cls)}))

    def with_overrides(self, **changes: Any) -> LossConfig:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    def reweighted(self, weights: Mapping[str, float]) -> LossConfig:
        """A copy with new weights for terms it already has, checked without the registry.

        Tuners call it during the run (up to once a step): the term names were validated
        when this configuration was made, so only the values need a check.
        """
        unknown = sorted(set(weights) - set(self.weights))
        if unknown:
            raise ConfigError(
                f"cannot reweight term(s) {', '.join(map(repr, unknown))}: not in this "
                f"configuration's weights ({', '.join(sorted(self.weights))})"
            )
        for name, weight in weights.items():
            _require_non_negative(f"weights.{name}", weight)
        changed = copy.copy(self)
        object.__setattr__(
            changed, "weights", {**self.weights, **{n: float(w) for n, w in weights.items()}}
        )
        return changed


@dataclass(frozen=True)
class ReferenceCacheConfig:
    """Serve the reference's logits of inputs seen before from memory (off by default).

    ``max_mb`` bounds the cache; ``copy_to_host`` also caches inputs on an accelerator
    (their fingerprint then needs a device-to-host copy, which may cost more than it saves).
    """

    max_mb: float = DEFAULT_REFERENCE_CACHE_MB
    copy_to_host: bool = False

    def __post_init__(self) -> None:
        if not _is_number(self.max_mb) or not self.max_mb > 0:
            raise ConfigError(
                f"reference_cache.max_mb must be a number > 0 (MiB), got {self.max_mb!r}"
            )
        if not isinstance(self.copy_to_host, bool):
            raise ConfigError(
                f"reference_cache.copy_to_host must be true or false, got {self.copy_to_host!r}"
            )

    @classmethod
    def from_value(cls, value: Any) -> ReferenceCacheConfig | None:
        return _optional_section(cls, "reference_cache", value)


@dataclass(frozen=True)
class Config:
    """Everything a labelkeep run is told: the loss, how to read logits, and the run's switches."""

    loss: LossConfig = field(default_factory=LossConfig)
    logits: LogitsSelector = None
    train_mode_only: bool = True
    tuner: str = DEFAULT_TUNER
    report: str | None = None
    strict: bool = False
    disabled_adapters: tuple[str, ...] = ()
    adapters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-adapter options, e.g. ``{"torch-pruning": {"loss_during_importance": True}}``;
    each adapter validates its own keys."""
    reference_cache: ReferenceCacheConfig | None = None
    """Reuse the reference's logits of inputs seen before (``{max_mb: 64}``); None: off."""
    softadapt: SoftAdaptConfig = field(default_factory=SoftAdaptConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", LossConfig.from_value(self.loss))
        if self.logits is not None and (
            isinstance(self.logits, bool) or not isinstance(self.logits, str | int)
        ):
            raise ConfigError(
                f"logits must be a key/attribute name or a tuple index, "
                f"got {self.logits!r}; e.g. logits: logits  or  logits: 0"
            )
        for key in ("train_mode_only", "strict"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.tuner, str) or not self.tuner:
            raise ConfigError(f"tuner must be a tuner name such as 'fixed', got {self.tuner!r}")
        if self.report is not None and not isinstance(self.report, str):
            raise ConfigError(f"report must be a file path, got {self.report!r}")
        adapters = self.disabled_adapters
        if isinstance(adapters, str) or not all(isinstance(a, str) for a in adapters):
            raise ConfigError(
                f"disabled_adapters must be a list of adapter names, got {adapters!r}"
            )
        object.__setattr__(self, "disabled_adapters", tuple(adapters))
        object.__setattr__(self, "adapters", _checked_adapter_options(self.adapters))
        object.__setattr__(
            self, "reference_cache", ReferenceCacheConfig.from_value(self.reference_cache)
        )
        object.__setattr__(self, "softadapt", SoftAdaptConfig.from_value(self.softadapt))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Config:
        """Validate a plain mapping (as read from YAML) into a :class:`Config`."""
        if data is None:
            return cls()
        return cls(**_checked_mapping("the configuration", data, {f.name for f in fields(cls)}))

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :meth:`from_dict` (and the YAML file) takes back."""
        focal = self.loss.focal
        return {
            "loss": {
                "weights": dict(self.loss.weights),
                "temperature": self.loss.temperature,
                "focal": None if focal is None else {"base": focal.base, "scale": focal.scale},
                "function_matching": asdict(self.loss.function_matching),
            },
            "logits": self.logits,
            "train_mode_only": self.train_mode_only,
            "tuner": self.tuner,
            "report": self.report,
            "strict": self.strict,
            "disabled_adapters": list(self.disabled_adapters),
            "adapters": {name: dict(options) for name, options in self.adapters.items()},
            "reference_cache": None
            if self.reference_cache is None
            else {
                "max_mb": self.reference_cache.max_mb,
                "copy_to_host": self.reference_cache.copy_to_host,
            },
            "softadapt": asdict(self.softadapt),
        }


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the configuration from ``path``, ``$LABELKEEP_CONFIG`` or ``./labelkeep.yaml``."""
    chosen = path if path is not None else (os.environ.get(CONFIG_ENV) or None)
    if chosen is None:
        default = Path(DEFAULT_CONFIG_FILE)
        return read_config_file(default) if default.is_file() else Config()
    return read_config_file(Path(chosen))


def read_config_file(path: Path) -> Config:
    """Parse one YAML file; errors name the file (and the line, for YAML syntax errors)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read config file {str(path)!r}: {reason}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {str(path)!r}{where}: invalid YAML ({problem})") from exc
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}"
        )
    try:
        return Config.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc}") from exc


def _optional_section(cls: type[_Section], key: str, value: Any) -> _Section | None:
    """A switchable section: None or False is off, True its defaults, a mapping validated."""
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    return cls(**_checked_mapping(key, value, {f.name for f in fields(cls)}))


def _settings_section(cls: type[_Section], key: str, value: Any) -> _Section:
    """A section that is never off (its settings matter only where it is used): None its
    defaults, a mapping validated."""
    section = _optional_section(cls, key, value)
    return cls() if section is None else section


def _checked_mapping(what: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {value!r}")
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {what}; "
            f"allowed keys: {', '.join(sorted(allowed))}"
        )
    return dict(value)


def _checked_weights(weights: Any) -> dict[str, float]:
    """Validate term weights; ``ce`` (the user's own loss) keeps weight 1 unless given.

    So ``{kd: 2}`` adds KD to the user's loss instead of silently dropping that loss.
    Whether each name is a registered term is checked where terms are resolved
    (:func:`labelkeep_plugins.plugins.check_config`, the loss composer): a configuration
    is plain data and never loads plugins.
    """
    from labelkeep_plugins.loss.terms import GROUND_TRUTH_TERM

    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(
            f"weights must be a non-empty mapping of term name to weight, "
            f"got {weights!r}; e.g. {{ce: 1.0, kd: 1.0}}"
        )
    checked: dict[str, float] = {GROUND_TRUTH_TERM: 1.0}
    for name, weight in weights.items():
        if not isinstance(name, str):
            raise ConfigError(f"weights: term names are strings, got {name!r}")
        _require_non_negative(f"weights.{name}", weight)
        checked[name] = float(weight)
    if not any(checked.values()):
        raise ConfigError(
            f"all weights are 0 ({checked}); give at least one term a weight > 0, "
            f"e.g. ce: 1.0, kd: 1.0"
        )
    return checked


def _checked_adapter_options(options: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(options, Mapping) or not all(
        isinstance(name, str) and isinstance(value, Mapping) for name, value in options.items()
    ):
        raise ConfigError(
            f"adapters must map adapter names to option mappings, got {options!r}; e.g. "
            "adapters: {torch-pruning: {loss_during_importance: true}}"
        )
    return {name: dict(value) for name, value in options.items()}


def _require_non_negative(key: str, value: Any) -> None:
    if not _is_number(value) or value < 0:
        raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
