"""Reading logits out of whatever a model's forward returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from labelkeep_plugins.config import LogitsSelector
from labelkeep_plugins.errors import LogitsError

_HOW_TO_SELECT = (
    "tell labelkeep where the logits are: `logits: <key or attribute>` or "
    "`logits: <tuple index>` in labelkeep.yaml, or `logits=` in Python"
)


def as_logits(output: Any, selector: LogitsSelector = None) -> torch.Tensor:
    """The (batch, classes) logits inside ``output``.

    Without a selector: a tensor is taken as is, and a mapping or object with a
    ``logits`` entry (Hugging Face style) gives that entry. Anything else needs a
    selector: a key or attribute name, or an index into a tuple or list.
    """
    found = _select(output, selector) if selector is not None else _default(output)
    if not isinstance(found, torch.Tensor):
        raise LogitsError(
            f"the model output selected as logits is a {type(found).__name__}, "
            f"not a tensor; {_HOW_TO_SELECT}"
        )
    if found.dim() == 1 and not found.is_floating_point():
        raise LogitsError(
            f"the model output is a tensor of integer class ids (shape {tuple(found.shape)}, "
            f"dtype {found.dtype}), not logits: a model that returns its predicted labels (in "
            f"eval mode, say) cannot be compared by its scores; make its forward return the "
            f"(batch, classes) logits and take the argmax outside the model"
        )
    if found.dim() != 2 or not found.is_floating_point():
        raise LogitsError(
            f"logits must be a floating-point (batch, classes) tensor, got shape "
            f"{tuple(found.shape)} and dtype {found.dtype}; {_HOW_TO_SELECT}"
        )
    return found


def _default(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if not isinstance(output, Mapping | Sequence) and hasattr(output, "logits"):
        return output.logits
    raise LogitsError(
        f"cannot read logits from a model output of type {type(output).__name__}"
        f"{_describe(output)}; {_HOW_TO_SELECT}"
    )


def _select(output: Any, selector: str | int) -> Any:
    try:
        if isinstance(selector, int):
            return output[selector]
        if isinstance(output, Mapping):
            return output[selector]
        return getattr(output, selector)
    except (KeyError, IndexError, AttributeError, TypeError) as exc:
        raise LogitsError(
            f"logits selector {selector!r} does not apply to a model output of "
            f"type {type(output).__name__}{_describe(output)} ({exc})"
        ) from exc


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f" with keys {sorted(map(str, output))}"
    if isinstance(output, Sequence) and not isinstance(output, str):
        return f" of length {len(output)}"
    return ""
