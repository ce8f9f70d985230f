"""Loss terms: small per-sample functions of student logits, reference logits and labels.

A term returns one value per sample so that per-sample (focal) weights can be
applied before the batch is reduced. Built-in terms live in
:mod:`labelkeep_plugins.loss.builtin_terms`; third parties add their own through the
``labelkeep_register_terms`` hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labelkeep_plugins.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TermInputs:
    """What a term sees: fp32 logits of shape (batch, classes) and optional labels."""

    student: torch.Tensor
    reference: torch.Tensor
    targets: torch.Tensor | None
    temperature: float


@dataclass(frozen=True)
class LossTerm:
    """One named loss term.

    ``per_sample(inputs)`` returns a (batch,) tensor. ``needs_targets`` terms are
    skipped where labels are not seen; ``teacher`` terms get the focal weights.
    ``on_perturbed_copy`` terms are not taken on the batch's own logits: the composer
    leaves them out and the injector computes them on a perturbed copy of the batch
    (``fm``, :mod:`labelkeep_plugins.injector.function_matching`).
    """

    name: str
    per_sample: Callable[[TermInputs], torch.Tensor]
    needs_targets: bool = False
    teacher: bool = True
    description: str = ""
    on_perturbed_copy: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"loss term name {self.name!r} must be a Python identifier")


GROUND_TRUTH_TERM = "ce"
"""The term that stands for the user's own loss when labelkeep injects into a loop."""

FUNCTION_MATCHING_TERM = "fm"
"""KD on a mixed copy of each training batch (Beyer et al.); see ``on_perturbed_copy``."""


def check_term_names(weights: Iterable[str], known: Iterable[str]) -> None:
    """Every weighted term is one of ``known``; else a ConfigError that lists them.

    The configuration cannot check this itself (terms come from plugins, and
    ``config.py`` never reads the registry): whoever resolves the names does.
    """
    names = sorted(known)
    for name in weights:
        if name not in names:
            raise ConfigError(
                f"unknown loss term {name!r} in weights; known terms: "
                f"{', '.join(names)} (plugins can add more)"
            )
