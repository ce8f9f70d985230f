"""The NNI search space of the loss, its validation, and one parameter set -> ``LossConfig``.

The format is NNI's (``{"kd": {"_type": "uniform", "_value": [0, 2]}, ...}``) so the same
file serves ``labelkeep tune`` and an NNI experiment's ``searchSpaceFile``. Keys are
loss-term names (their weights) plus ``temperature``, ``focal_base`` and ``focal_scale``.
A parameter set only overrides what it names: the rest keeps the base configuration's
values, so the user's own term ``ce`` stays at its weight unless the space names it. Every
key of a space is drawn independently; no weight is derived from another (``ce`` is not
``1 - kd``). The default space (:func:`default_search_space`) leaves ``ce`` out.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labelkeep_plugins.config import FocalConfig, LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.loss.terms import GROUND_TRUTH_TERM

TEMPERATURE = "temperature"
FOCAL_BASE = "focal_base"
FOCAL_SCALE = "focal_scale"
SETTINGS = (TEMPERATURE, FOCAL_BASE, FOCAL_SCALE)

# Ranges chosen around what `labelkeep demo` measured: KD up to twice the user's loss,
# the sharper terms lower, T from 1 to 8 on a log scale, focal boost up to 4x on the
# samples the reference gets right. `ce` (only when asked for) never reaches 0, so a
# parameter set can never zero every weight.
DEFAULT_RANGES: Mapping[str, Mapping[str, Any]] = {
    "ce": {"_type": "uniform", "_value": [0.1, 1.0]},
    "kd": {"_type": "uniform", "_value": [0.0, 2.0]},
    "hard": {"_type": "uniform", "_value": [0.0, 1.0]},
    "hinge": {"_type": "uniform", "_value": [0.0, 1.0]},
    "logit_mse": {"_type": "uniform", "_value": [0.0, 0.5]},
    TEMPERATURE: {"_type": "loguniform", "_value": [1.0, 8.0]},
    FOCAL_BASE: {"_type": "uniform", "_value": [0.5, 1.0]},
    FOCAL_SCALE: {"_type": "uniform", "_value": [0.0, 4.0]},
}
PLUGIN_TERM_RANGE: Mapping[str, Any] = {"_type": "uniform", "_value": [0.0, 1.0]}
BUILTIN_TERMS_WITHOUT_TEMPERATURE = frozenset({"ce", "hard", "hinge", "logit_mse"})

# NNI types whose every value lies in a closed range we can check. The normal types are
# left out: they can propose negative weights or temperatures whatever their parameters.
_RANGE_TYPES = frozenset({"uniform", "loguniform"})
_QUANTIZED_TYPES = frozenset({"quniform", "qloguniform"})
SUPPORTED_TYPES = frozenset({*_RANGE_TYPES, *_QUANTIZED_TYPES, "choice", "randint"})


def default_search_space(terms: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """A search space over ``terms`` (default: every registered teacher term).

    ``temperature`` is added when a selected term can use it (``kd`` or a plugin's term),
    ``focal_scale`` when a selected term is a teacher term (focal weights apply to those).
    """
    from labelkeep_plugins.plugins import loss_terms

    known = loss_terms()
    chosen = list(terms) if terms else sorted(n for n, t in known.items() if t.teacher)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown loss term(s) {', '.join(map(repr, unknown))} in --terms; "
            f"registered terms: {', '.join(sorted(known))}"
        )
    space = {name: dict(DEFAULT_RANGES.get(name, PLUGIN_TERM_RANGE)) for name in chosen}
    if any(name not in BUILTIN_TERMS_WITHOUT_TEMPERATURE for name in chosen):
        space[TEMPERATURE] = dict(DEFAULT_RANGES[TEMPERATURE])
    if any(known[name].teacher for name in chosen):
        space[FOCAL_SCALE] = dict(DEFAULT_RANGES[FOCAL_SCALE])
    return {key: {"_type": s["_type"], "_value": list(s["_value"])} for key, s in space.items()}


def describe_space(space: Mapping[str, Any], base: LossConfig) -> str:
    """Which keys a search varies, and which weights stay at the base configuration's value.

    A trial line names only the searched keys, and the default space leaves ``ce`` (the
    user's own loss) out: without this line a fixed weight looks absent, and a searched
    ``ce`` (``--terms ce,...``) looks derived from the others. No weight is derived.
    """
    text = f"searching {', '.join(sorted(space))}, each drawn on its own"
    fixed = {name: weight for name, weight in base.weights.items() if name not in space}
    if fixed:
        held = ", ".join(f"{name}={weight:.3g}" for name, weight in sorted(fixed.items()))
        text += f"; kept at the base configuration: {held}"
    if GROUND_TRUTH_TERM not in space:
        low, high = DEFAULT_RANGES[GROUND_TRUTH_TERM]["_value"]
        text += (
            f" ({GROUND_TRUTH_TERM}, your own loss, is searched only when named in --terms or "
            f"the space file; its default range is [{low}, {high}])"
        )
    return text


def read_search_space(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read and validate a search space JSON file; errors name the file and the key."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read search space file {where!r}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"search space file {where!r} is not valid JSON ({exc})") from exc
    return validate_search_space(data, source=f"search space file {where!r}")


def validate_search_space(space: Any, *, source: str = "search space") -> dict[str, dict[str, Any]]:
    """Check every key and range; returns a plain copy.

    Weights and focal settings must stay >= 0 and the temperature > 0 over the whole
    range, so that no proposed parameter set can be an invalid configuration.
    """
    from labelkeep_plugins.plugins import loss_terms

    if not isinstance(space, Mapping) or not space:
        raise ConfigError(
            f"{source} must be a non-empty JSON object of "
            '{"name": {"_type": ..., "_value": [...]}}, got ' + repr(space)[:80]
        )
    allowed = sorted(loss_terms()) + list(SETTINGS)
    checked: dict[str, dict[str, Any]] = {}
    for name, spec in space.items():
        if name not in allowed:
            raise ConfigError(
                f"{source}: unknown key {name!r}; allowed keys: {', '.join(allowed)} "
                "(loss-term weights and the loss settings)"
            )
        low, high = _value_range(f"{source}: key {name!r}", spec)
        _check_domain(f"{source}: key {name!r}", name, low, high)
        checked[name] = {"_type": spec["_type"], "_value": list(spec["_value"])}
    return checked


def parameters_to_loss(
    parameters: Mapping[str, Any], base: LossConfig, *, ignore_unknown: bool = False
) -> LossConfig:
    """The loss of one parameter set: ``base`` with the weights and settings it names.

    ``ignore_unknown`` skips keys that are not ours (inside an NNI trial the user's own
    hyperparameters share the parameter set); otherwise they are an error.
    """
    from labelkeep_plugins.plugins import loss_terms

    known = loss_terms()
    weights = dict(base.weights)
    settings: dict[str, Any] = {}
    for name, value in parameters.items():
        if name in known:
            weights[name] = value
        elif name in SETTINGS:
            settings[name] = value
        elif not ignore_unknown:
            raise ConfigError(
                f"unknown parameter {name!r}; expected loss-term weights "
                f"({', '.join(sorted(known))}) or {', '.join(SETTINGS)}"
            )
    try:
        return LossConfig(
            weights=weights,
            temperature=settings.get(TEMPERATURE, base.temperature),
            focal=_focal(settings, base.focal),
        )
    except ConfigError as exc:
        raise ConfigError(f"parameter set {dict(parameters)!r}: {exc}") from exc


def _focal(settings: Mapping[str, Any], base: FocalConfig | None) -> FocalConfig | None:
    if FOCAL_BASE not in settings and FOCAL_SCALE not in settings:
        return base
    start = base if base is not None else FocalConfig()
    return FocalConfig(
        base=settings.get(FOCAL_BASE, start.base), scale=settings.get(FOCAL_SCALE, start.scale)
    )


def _value_range(where: str, spec: Any) -> tuple[float, float]:
    """The smallest and largest value a spec can propose; checks its NNI shape."""
    if not isinstance(spec, Mapping) or set(spec) != {"_type", "_value"}:
        raise ConfigError(f'{where} must be {{"_type": ..., "_value": [...]}}, got {spec!r}')
    kind, value = spec["_type"], spec["_value"]
    if kind not in SUPPORTED_TYPES:
        raise ConfigError(
            f"{where}: _type {kind!r} is not supported here; use one of "
            f"{', '.join(sorted(SUPPORTED_TYPES))} (normal types can propose negative values)"
        )
    if not isinstance(value, list) or not value or not all(map(_is_number, value)):
        raise ConfigError(f"{where}: _value must be a non-empty list of numbers, got {value!r}")
    if kind == "choice":
        return min(value), max(value)
    size = 3 if kind in _QUANTIZED_TYPES else 2
    if len(value) != size:
        shape = "[low, high, q]" if size == 3 else "[low, high]"
        raise ConfigError(f"{where}: _value of {kind} must be {shape}, got {value!r}")
    low, high = value[0], value[1]
    if not low < high:
        raise ConfigError(f"{where}: low must be below high in {value!r} (for one value: choice)")
    if size == 3 and not value[2] > 0:
        raise ConfigError(f"{where}: the step q must be > 0, got {value[2]!r}")
    if kind.endswith("loguniform") and not low > 0:
        raise ConfigError(f"{where}: {kind} needs low > 0, got {low!r}")
    return low, (high - 1 if kind == "randint" else high)


def _check_domain(where: str, name: str, low: float, high: float) -> None:
    if name == TEMPERATURE and not low > 0:
        raise ConfigError(
            f"{where}: the temperature must stay > 0 (it divides the logits), but the range "
            f"goes down to {low!r}; e.g. {json.dumps(DEFAULT_RANGES[TEMPERATURE])}"
        )
    if name != TEMPERATURE and low < 0:
        what = "focal settings" if name in SETTINGS else "weights"
        raise ConfigError(
            f"{where}: {what} must stay >= 0, but the range goes down to {low!r}; "
            f'e.g. {{"_type": "uniform", "_value": [0, {max(high, 1)!r}]}}'
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
