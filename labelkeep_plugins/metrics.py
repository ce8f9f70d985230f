"""Agreement metrics: how far a compressed classifier's labels drift from its reference.

Equal accuracy can hide churn, so these count disagreements (mismatches), the ones
that cost a right answer (negative flips) and how close the probabilities stay
(probability loyalty: 1 - the Jensen-Shannon distance, base 2). Negative flip impact
is negative flips over the compressed model's errors.
:func:`agreement` is one :class:`AgreementMeter` update, so both share every formula.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from labelkeep_plugins.errors import ConfigError, NonFiniteError, ShapeMismatchError

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy.typing as npt

    TensorLike: TypeAlias = torch.Tensor | npt.ArrayLike

__all__ = ["AgreementMeter", "AgreementReport", "agreement"]

_STATE_FORMAT = 1
# Running integer tallies; loyalty_samples / topk_samples count the samples those figures cover.
_COUNTS = (
    *("samples", "mismatches", "labelled", "reference_correct", "compressed_correct"),
    *("negative_flips", "positive_flips", "loyalty_samples", "topk_samples"),
)


@dataclass(frozen=True)
class AgreementReport:
    """The agreement figures of a compressed model against its reference.

    Target-dependent figures are ``None`` without targets; ``probability_loyalty``
    needs logits from both models and ``topk_agreement`` logits from the compressed one.
    """

    samples: int
    mismatches: int
    mismatch_rate: float
    agreement_rate: float
    labelled: int
    negative_flips: int | None
    negative_flip_rate: float | None
    positive_flips: int | None
    positive_flip_rate: float | None
    negative_flip_impact: float | None
    reference_accuracy: float | None
    compressed_accuracy: float | None
    per_class_mismatch_rate: dict[int, float]
    per_class_mismatch_spread: dict[str, float]
    probability_loyalty: float | None
    topk_agreement: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (JSON objects only have string keys)."""
        out = asdict(self)
        out["per_class_mismatch_rate"] = {
            str(k): v for k, v in self.per_class_mismatch_rate.items()
        }
        out["topk_agreement"] = {str(k): v for k, v in self.topk_agreement.items()}
        return out

    def __str__(self) -> str:
        parts = [f"mismatches {self.mismatches}/{self.samples} ({self.mismatch_rate:.2%})"]
        if self.labelled:
            parts += [
                f"negative flips {self.negative_flips}/{self.labelled} "
                f"({self.negative_flip_rate:.2%})",
                f"positive flips {self.positive_flips} ({self.positive_flip_rate:.2%})",
                f"NFI {self.negative_flip_impact:.3f}",
                f"accuracy ref {self.reference_accuracy:.2%} / "
                f"compressed {self.compressed_accuracy:.2%}",
            ]
        if self.probability_loyalty is not None:
            parts.append(f"probability loyalty {self.probability_loyalty:.4f}")
        parts += [f"top-{k} {rate:.2%}" for k, rate in self.topk_agreement.items()]
        return ", ".join(parts)


@dataclass(frozen=True)
class _Batch:
    """One validated batch: predicted labels always, float64 logits where given."""

    reference_labels: torch.Tensor
    compressed_labels: torch.Tensor
    reference_logits: torch.Tensor | None
    compressed_logits: torch.Tensor | None
    targets: torch.Tensor | None


def _as_tensor(name: str, value: TensorLike) -> torch.Tensor:
    """A detached CPU tensor, so the meter never holds graphs or device memory."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeMismatchError(
            f"`{name}` cannot be read as a tensor ({exc}); expected logits (N, C) or labels (N,)"
        ) from exc
    return tensor.detach().cpu()


def _read_labels(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """1-D integer labels as int64; float labels are refused rather than silently truncated."""
    dtype = tensor.dtype
    integer = dtype != torch.bool and not (dtype.is_floating_point or dtype.is_complex)
    if tensor.ndim != 1 or not (integer or len(tensor) == 0):  # a bare [] arrives as float32
        raise ShapeMismatchError(
            f"`{name}` has shape {tuple(tensor.shape)} and dtype {tensor.dtype}: "
            f"expected labels of shape (N,) with an integer dtype"
            + (" or logits of shape (N, C)" if name != "targets" else "")
        )
    return tensor.to(torch.int64)


def _read_logits(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """(N, C) logits as float64; C >= 2 because argmax over one logit is always 0."""
    if tensor.shape[1] < 2:
        raise ShapeMismatchError(
            f"`{name}` has shape {tuple(tensor.shape)}: expected logits (N, C) with C >= 2; "
            f"for a single-logit binary classifier pass labels, e.g. (logits > 0).long().view(-1)"
        )
    logits = tensor.to(torch.float64)
    if not torch.isfinite(logits).all():
        raise NonFiniteError(f"`{name}` logits contain NaN or infinite values")
    return logits


def _read_predictions(name: str, value: TensorLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(labels, logits or None) from either logits (N, C) or labels (N,)."""
    tensor = _as_tensor(name, value)
    if tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ShapeMismatchError(
            f"`{name}` has shape {tuple(tensor.shape)} and dtype {tensor.dtype}: expected "
            f"real logits (N, C) or integer labels (N,)"
        )
    if tensor.ndim == 2:
        logits = _read_logits(name, tensor)
        return logits.argmax(dim=1), logits
    if tensor.ndim == 1:
        return _read_labels(name, tensor), None
    raise ShapeMismatchError(
        f"`{name}` has shape {tuple(tensor.shape)}: expected logits (N, C) or labels (N,)"
    )


def _read_batch(
    reference: TensorLike, compressed: TensorLike, targets: TensorLike | None
) -> _Batch:
    """Validate one batch; every shape problem is reported with the shapes involved."""
    ref_labels, ref_logits = _read_predictions("reference", reference)
    comp_labels, comp_logits = _read_predictions("compressed", compressed)
    target_labels = (
        None if targets is None else _read_labels("targets", _as_tensor("targets", targets))
    )
    shapes = {"reference": ref_labels if ref_logits is None else ref_logits}
    shapes["compressed"] = comp_labels if comp_logits is None else comp_logits
    if target_labels is not None:
        shapes["targets"] = target_labels
    for name, tensor in shapes.items():
        if len(tensor) != len(ref_labels):
            raise ShapeMismatchError(
                f"`{name}` has {len(tensor)} samples (shape {tuple(tensor.shape)}) but "
                f"`reference` has {len(ref_labels)} (shape {tuple(shapes['reference'].shape)}): "
                f"all inputs need the same number of samples N"
            )
    if len(ref_labels) == 0:
        raise ShapeMismatchError(
            f"`reference` and `compressed` have no samples (shapes "
            f"{tuple(shapes['reference'].shape)} and {tuple(shapes['compressed'].shape)}): "
            f"there is nothing to compare"
        )
    if ref_logits is not None and comp_logits is not None and ref_logits.shape != comp_logits.shape:
        raise ShapeMismatchError(
            f"`reference` logits have shape {tuple(ref_logits.shape)} but `compressed` logits "
            f"have shape {tuple(comp_logits.shape)}: both need the same number of classes C"
        )
    return _Batch(ref_labels, comp_labels, ref_logits, comp_logits, target_labels)


def _loyalty(reference_logits: torch.Tensor, compressed_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample 1 - JS distance (base 2) of the softmaxes; xlogy makes 0*log 0 = 0."""
    p = torch.softmax(reference_logits.to(torch.float64), dim=1)
    q = torch.softmax(compressed_logits.to(torch.float64), dim=1)
    m = 0.5 * (p + q)
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim=1)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim=1)
    divergence = (0.5 * (kl_pm + kl_qm) / math.log(2.0)).clamp(0.0, 1.0)
    return 1.0 - divergence.sqrt()  # the distance is the square root of the divergence, once


def _reference_rank(reference_labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Position of the reference label in the compressed ranking; ties break as argmax does.

    A rank of 0 means the compressed argmax (first maximal index) is the reference
    label, so top-1 agreement always equals the agreement rate.
    """
    classes = logits.shape[1]
    valid = (reference_labels >= 0) & (reference_labels < classes)
    index = reference_labels.clamp(0, classes - 1)[:, None]
    value = logits.gather(1, index)
    columns = torch.arange(classes)[None, :]
    ahead = (logits > value) | ((logits == value) & (columns < index))
    rank = ahead.sum(dim=1)
    rank[~valid] = classes  # a label the compressed model cannot output is in no top-k
    return rank


def _check_topk(topk: Iterable[int]) -> tuple[int, ...]:
    """Sorted distinct positive ints; a bad k is a configuration mistake, not a data one."""
    ks = tuple(topk)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ConfigError(f"topk must be positive integers, got {ks!r}")
    return tuple(sorted(set(ks)))


def _ratio(numerator: int | float, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _spread(rates: list[float]) -> dict[str, float]:
    if len(rates) < 2:
        return {"std": 0.0, "range": 0.0}
    return {"std": statistics.pstdev(rates), "range": max(rates) - min(rates)}


class AgreementMeter:
    """Streaming :func:`agreement`: running counts over batches, O(classes) memory.

    Batches with and without targets may be mixed; target figures then cover the
    labelled samples, loyalty the samples with logits from both models and top-k
    the samples with compressed logits. A sample's class (for the per-class rates)
    is its target when its batch has targets, else the reference's label. Combine
    meters across processes with :meth:`merge` (e.g. after
    ``torch.distributed.all_gather_object`` of :meth:`state_dict`).
    """

    def __init__(self, *, topk: Iterable[int] = (1, 5)) -> None:
        self.topk = _check_topk(topk)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen."""
        self._num_classes: int | None = None
        self._counts: dict[str, int] = dict.fromkeys(_COUNTS, 0)
        self._loyalty_sum = 0.0
        self._topk_hits: dict[int, int] = {}
        self._class_samples: dict[int, int] = {}
        self._class_mismatches: dict[int, int] = {}

    @property
    def samples(self) -> int:
        """Number of samples seen since the last reset."""
        return self._counts["samples"]

    @property
    def num_classes(self) -> int | None:
        """The class count of the logits seen (None before any, or with labels only)."""
        return self._num_classes

    @property
    def counts(self) -> Mapping[str, int]:
        """The running tallies (samples, mismatches, labelled, negative_flips, ...), read-only."""
        return MappingProxyType(self._counts)

    def __repr__(self) -> str:
        return f"AgreementMeter(samples={self.samples}, topk={self.topk})"

    def update(
        self, reference: TensorLike, compressed: TensorLike, targets: TensorLike | None = None
    ) -> None:
        """Add one batch: logits (N, C) or labels (N,) per model, optional targets (N,)."""
        batch = _read_batch(reference, compressed, targets)
        self._check_classes(batch)
        mismatch = batch.reference_labels != batch.compressed_labels
        self._counts["samples"] += len(mismatch)
        self._counts["mismatches"] += int(mismatch.sum())
        if batch.targets is not None:
            self._add_flips(batch.reference_labels, batch.compressed_labels, batch.targets)
        keys = batch.reference_labels if batch.targets is None else batch.targets
        self._add_per_class(keys, mismatch)
        ref_logits, comp_logits = batch.reference_logits, batch.compressed_logits
        if ref_logits is not None and comp_logits is not None:
            self._loyalty_sum += float(_loyalty(ref_logits, comp_logits).sum())
            self._counts["loyalty_samples"] += len(mismatch)
        if batch.compressed_logits is not None:
            self._add_topk(batch.reference_labels, batch.compressed_logits)

    def _check_classes(self, batch: _Batch) -> None:
        """The class count is fixed by the first logits seen; a change means mixed models."""
        name, logits = "reference", batch.reference_logits  # same C as compressed, if both
        if logits is None:
            name, logits = "compressed", batch.compressed_logits
        if logits is None:
            return
        if self._num_classes is None:
            self._num_classes = logits.shape[1]
        elif logits.shape[1] != self._num_classes:
            raise ShapeMismatchError(
                f"`{name}` logits have {logits.shape[1]} classes (shape {tuple(logits.shape)}) "
                f"but earlier batches had {self._num_classes}: the number of classes must "
                f"not change between batches"
            )

    def _add_flips(self, ref: torch.Tensor, comp: torch.Tensor, targets: torch.Tensor) -> None:
        ref_right = ref == targets
        comp_right = comp == targets
        self._counts["labelled"] += len(targets)
        self._counts["reference_correct"] += int(ref_right.sum())
        self._counts["compressed_correct"] += int(comp_right.sum())
        self._counts["negative_flips"] += int((ref_right & ~comp_right).sum())
        self._counts["positive_flips"] += int((~ref_right & comp_right).sum())

    def _add_per_class(self, keys: torch.Tensor, mismatch: torch.Tensor) -> None:
        """Tally per class present only, so a label of 10**9 costs one dict entry."""
        classes, inverse = torch.unique(keys, return_inverse=True)
        counts = torch.bincount(inverse, minlength=len(classes))
        wrong = torch.zeros(len(classes), dtype=torch.int64).index_add_(0, inverse, mismatch.long())
        for cls, count, miss in zip(classes.tolist(), counts.tolist(), wrong.tolist(), strict=True):
            self._class_samples[cls] = self._class_samples.get(cls, 0) + count
            self._class_mismatches[cls] = self._class_mismatches.get(cls, 0) + miss

    def _add_topk(self, reference: torch.Tensor, compressed_logits: torch.Tensor) -> None:
        rank = _reference_rank(reference, compressed_logits)
        self._counts["topk_samples"] += len(rank)
        for k in self.topk:
            if k <= compressed_logits.shape[1]:
                self._topk_hits[k] = self._topk_hits.get(k, 0) + int((rank < k).sum())

    def compute(self) -> AgreementReport:
        """The report over every sample seen so far."""
        c = self._counts
        n, labelled = c["samples"], c["labelled"]
        if n == 0:
            raise ShapeMismatchError("AgreementMeter has seen no samples yet; call update() first")
        rates = {
            cls: self._class_mismatches[cls] / count
            for cls, count in sorted(self._class_samples.items())
        }
        compressed_errors = labelled - c["compressed_correct"]
        impact = _ratio(c["negative_flips"], compressed_errors) if compressed_errors else 0.0
        return AgreementReport(
            samples=n,
            mismatches=c["mismatches"],
            mismatch_rate=c["mismatches"] / n,
            agreement_rate=1.0 - c["mismatches"] / n,
            labelled=labelled,
            negative_flips=c["negative_flips"] if labelled else None,
            negative_flip_rate=_ratio(c["negative_flips"], labelled),
            positive_flips=c["positive_flips"] if labelled else None,
            positive_flip_rate=_ratio(c["positive_flips"], labelled),
            negative_flip_impact=impact if labelled else None,
            reference_accuracy=_ratio(c["reference_correct"], labelled),
            compressed_accuracy=_ratio(c["compressed_correct"], labelled),
            per_class_mismatch_rate=rates,
            per_class_mismatch_spread=_spread(list(rates.values())),
            probability_loyalty=_ratio(self._loyalty_sum, c["loyalty_samples"]),
            topk_agreement={
                k: hits / c["topk_samples"] for k, hits in sorted(self._topk_hits.items())
            },
        )

    def merge(self, other: AgreementMeter) -> AgreementMeter:
        """Add ``other``'s counts to this meter (e.g. from another DDP rank); returns self."""
        if not isinstance(other, AgreementMeter):
            raise ConfigError(f"can only merge an AgreementMeter, got {type(other).__name__}")
        if other.topk != self.topk:
            raise ConfigError(f"cannot merge meters with topk {self.topk} and {other.topk}")
        mine, theirs = self._num_classes, other._num_classes
        if mine is not None and theirs is not None and mine != theirs:
            raise ShapeMismatchError(
                f"cannot merge a meter over {mine} classes with one over {theirs}: "
                f"both need the same number of classes C"
            )
        self._num_classes = mine if theirs is None else theirs
        for key in _COUNTS:
            self._counts[key] += other._counts[key]
        self._loyalty_sum += other._loyalty_sum
        for target, source in (
            (self._topk_hits, other._topk_hits),
            (self._class_samples, other._class_samples),
            (self._class_mismatches, other._class_mismatches),
        ):
            for bucket, count in source.items():
                target[bucket] = target.get(bucket, 0) + count
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and lists (JSON-able), to checkpoint and resume a sweep."""
        return {
            "format": _STATE_FORMAT,
            "topk": list(self.topk),
            "num_classes": self._num_classes,
            "counts": dict(self._counts),
            "loyalty_sum": self._loyalty_sum,
            "topk_hits": [[k, hits] for k, hits in sorted(self._topk_hits.items())],
            "classes": [
                [cls, count, self._class_mismatches[cls]]
                for cls, count in sorted(self._class_samples.items())
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this meter's counts with ``state``; nothing changes if ``state`` is invalid."""
        loaded = _meter_from_state(state)
        if loaded.topk != self.topk:
            raise ConfigError(
                f"state was saved with topk {loaded.topk} but this meter has topk {self.topk}; "
                f"build the meter with the same topk"
            )
        self.__dict__.update(loaded.__dict__)


def _meter_from_state(state: dict[str, Any]) -> AgreementMeter:
    """A fresh meter holding ``state``; any malformed entry is a ConfigError."""
    try:
        if state["format"] != _STATE_FORMAT:
            raise ValueError(f"unknown format {state['format']!r}, expected {_STATE_FORMAT}")
        meter = AgreementMeter(topk=[int(k) for k in state["topk"]])
        meter._num_classes = None if state["num_classes"] is None else int(state["num_classes"])
        meter._counts = {key: int(state["counts"][key]) for key in _COUNTS}
        meter._loyalty_sum = float(state["loyalty_sum"])
        meter._topk_hits = {int(k): int(hits) for k, hits in state["topk_hits"]}
        for cls, count, miss in state["classes"]:
            meter._class_samples[int(cls)] = int(count)
            meter._class_mismatches[int(cls)] = int(miss)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"invalid AgreementMeter state ({exc!r}): expected the output of state_dict()"
        ) from exc
    return meter


def agreement(
    reference: TensorLike,
    compressed: TensorLike,
    targets: TensorLike | None = None,
    *,
    topk: Iterable[int] = (1, 5),
) -> AgreementReport:
    """Agreement of ``compressed`` with ``reference`` on one set of samples.

    Each model is given as logits (N, C) or predicted labels (N,); ``targets`` are
    optional true labels (N,). One :class:`AgreementMeter` update, so the formulas
    are the meter's.
    """
    meter = AgreementMeter(topk=topk)
    meter.update(reference, compressed, targets)
    return meter.compute()
