"""A bounded cache of reference logits, per sample, keyed by a fingerprint of the input's content.

Why: the reference is frozen (``eval()``, no gradients, checksummed), so on the same input
it returns the same logits. A recovery loop sees each training sample once per epoch, and
every evaluation pass sees the same samples again, so from the second epoch on the
reference's forward pass can be a lookup instead.

Why per sample, not per batch: a shuffling ``DataLoader`` puts the same samples in other
batches every epoch, so a batch fingerprint would almost never repeat. Each row of the
batch is fingerprinted on its own; the reference runs only on the rows not cached yet, and
the logits are put back in batch order. This relies on the reference treating samples
independently in eval mode, which holds for the usual layers (batch norm uses its running
statistics in eval mode); logits of a sub-batch may differ from the full batch's in the
last bits of float rounding.

The fingerprint is BLAKE2b (16-byte digest) over each row's raw bytes, with the dtype,
the per-row shape and the device of every tensor argument and the ``repr`` of plain
scalar arguments. No pickle is involved anywhere: keys are digests, values stay tensors
in memory, nothing is written to disk. Memory is bounded by ``max_bytes`` (the logits'
bytes plus a per-entry overhead estimate), least recently used first out.

Calls the cache cannot key safely pass straight through to the reference (counted as
``bypassed``): arguments that are neither tensors nor plain scalars, tensors whose first
dimension is not the batch, and tensors off the CPU unless ``copy_to_host=True`` (hashing
them needs a device-to-host copy, which can cost more than the forward it saves).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from labelkeep_plugins.errors import ConfigError

# Python and tensor object overhead of one cached row, beyond its logits' bytes (estimate).
ENTRY_OVERHEAD_BYTES = 256
DEFAULT_MAX_BYTES = 64 * 2**20
_KEYABLE = (torch.Tensor, bool, int, float, str, type(None))

ReferenceFunction = Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor]


@dataclass
class CacheStats:
    """What the cache did: rows served, rows computed, calls passed through, rows dropped."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}


class ReferenceCache:
    """LRU of per-sample reference logits within a byte budget; see the module docstring."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, *, copy_to_host: bool = False) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.copy_to_host = copy_to_host
        self.stats = CacheStats()
        self._rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], reference: ReferenceFunction
    ) -> torch.Tensor:
        """The reference's logits for ``args``/``kwargs``, running ``reference`` only on misses."""
        keys = self.fingerprints(args, kwargs)
        if keys is None:
            self.stats.bypassed += 1
            return reference(args, kwargs)
        with self._lock:
            found = [self._get(key) for key in keys]
        missing = [i for i, row in enumerate(found) if row is None]
        if missing:
            computed = reference(*_rows_of(args, kwargs, missing, len(keys)))
            if computed.dim() == 0 or computed.shape[0] != len(missing):
                # Not one row of logits per sample: nothing can be cached for this model.
                self.stats.bypassed += 1
                return computed if len(missing) == len(keys) else reference(args, kwargs)
            with self._lock:
                for position, index in enumerate(missing):
                    found[index] = self._put(keys[index], computed[position])
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        return torch.stack(found)  # type: ignore[arg-type]

    def fingerprints(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[bytes] | None:
        """One digest per sample of the batch, or None when the call cannot be keyed safely."""
        values = [*args, *(kwargs[name] for name in sorted(kwargs))]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if not tensors or any(not isinstance(v, _KEYABLE) for v in values):
            return None
        batch = tensors[0].shape[0] if tensors[0].dim() else 0
        if batch == 0 or any(t.dim() == 0 or t.shape[0] != batch for t in tensors):
            return None
        if not self.copy_to_host and any(t.device.type != "cpu" for t in tensors):
            return None
        context = hashlib.blake2b(repr(_describe(values, sorted(kwargs))).encode(), digest_size=16)
        rows = [_row_bytes(t, batch) for t in tensors]
        digests = []
        for index in range(batch):
            digest = context.copy()
            for table in rows:
                digest.update(table[index])
            digests.append(digest.digest())
        return digests

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self.stats.entries = self.stats.bytes = 0

    def _get(self, key: bytes) -> torch.Tensor | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def _put(self, key: bytes, row: torch.Tensor) -> torch.Tensor:
        """Keep a copy of ``row`` (not a view that pins the whole batch) and evict to budget."""
        stored = row.detach().clone()
        size = _entry_bytes(stored)
        if size > self.max_bytes:
            return stored
        previous = self._rows.pop(key, None)
        if previous is not None:
            self.stats.bytes -= _entry_bytes(previous)
        self._rows[key] = stored
        self.stats.bytes += size
        while self.stats.bytes > self.max_bytes:
            _, dropped = self._rows.popitem(last=False)
            self.stats.bytes -= _entry_bytes(dropped)
            self.stats.evictions += 1
        self.stats.entries = len(self._rows)
        return stored


def _describe(values: Sequence[Any], names: Sequence[str]) -> tuple[Any, ...]:
    """What besides the row bytes decides the output: dtypes, row shapes, devices, scalars."""
    described = [
        (str(v.dtype), tuple(v.shape[1:]), str(v.device)) if isinstance(v, torch.Tensor) else v
        for v in values
    ]
    return (tuple(names), tuple(described))


def _row_bytes(tensor: torch.Tensor, batch: int) -> Any:
    """The tensor as a (batch, bytes per row) uint8 array on the host, rows contiguous."""
    flat = tensor.detach()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.contiguous().reshape(batch, -1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return flat.numpy()


def _rows_of(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: list[int], batch: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments restricted to the samples ``index`` (every tensor is batch-first)."""
    if len(index) == batch:
        return args, kwargs
    positions = torch.tensor(index)

    def pick(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.index_select(0, positions.to(value.device))
        return value

    return tuple(pick(a) for a in args), {k: pick(v) for k, v in kwargs.items()}


def _entry_bytes(row: torch.Tensor) -> int:
    return row.numel() * row.element_size() + ENTRY_OVERHEAD_BYTES
