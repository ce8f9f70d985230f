"""The teacher-output cache: per-sample hits across reshuffled batches, bounds, safe bypasses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labelkeep_plugins.config import LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.injector.attach import InjectionHandle
from labelkeep_plugins.loss.composer import LossComposer
from labelkeep_plugins.reference.cache import ENTRY_OVERHEAD_BYTES, ReferenceCache
from labelkeep_plugins.reference.snapshot import snapshot_reference


class Counting:
    """A reference function that counts the rows it is asked to compute."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.rows = 0

    def __call__(self, args, kwargs):
        self.rows += args[0].shape[0]
        with torch.no_grad():
            return self.model(*args, **kwargs)


@pytest.fixture
def reference() -> Counting:
    torch.manual_seed(0)
    return Counting(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)))


def test_rows_hit_in_any_batch_order_and_only_misses_run(reference: Counting) -> None:
    cache = ReferenceCache()
    x = torch.randn(32, 6)
    first = cache((x[:20],), {}, reference)
    assert reference.rows == 20 and cache.stats.misses == 20
    order = torch.randperm(32)
    mixed = cache((x[order],), {}, reference)
    assert reference.rows == 32  # only the 12 new rows ran
    assert cache.stats.hits == int((order < 20).sum())
    assert torch.allclose(mixed, reference.model(x[order]), atol=1e-6)
    assert torch.equal(cache((x[:20],), {}, reference), first)  # cached rows come back exactly
    assert cache.stats.entries == 32 and cache.stats.hit_rate > 0.5


def test_the_key_is_the_content_dtype_and_scalars(reference: Counting) -> None:
    cache = ReferenceCache()
    x = torch.randn(4, 6)
    keys = cache.fingerprints((x,), {})
    assert keys is not None and len(set(keys)) == 4
    assert cache.fingerprints((x.clone(),), {}) == keys  # same bytes, same keys
    assert cache.fingerprints((x.double(),), {}) != keys
    assert cache.fingerprints((x,), {"scale": 2}) != cache.fingerprints((x,), {"scale": 3})
    y = x.clone()
    y[2, 0] += 1e-3
    assert cache.fingerprints((y,), {})[2] != keys[2]
    assert cache.fingerprints((y,), {})[:2] == keys[:2]
    assert cache.fingerprints((x.t().contiguous().t(),), {}) == keys  # layout does not matter


def test_memory_stays_within_the_byte_budget(reference: Counting) -> None:
    per_row = 3 * 4 + ENTRY_OVERHEAD_BYTES
    cache = ReferenceCache(max_bytes=5 * per_row)
    x = torch.randn(8, 6)
    cache((x,), {}, reference)
    assert cache.stats.entries == 5 and cache.stats.bytes <= 5 * per_row
    assert cache.stats.evictions == 3
    cache((x[3:],), {}, reference)  # the 5 most recent rows are the cached ones
    assert cache.stats.hits == 5
    tiny = ReferenceCache(max_bytes=10)
    assert tiny((x,), {}, reference).shape == (8, 3) and tiny.stats.entries == 0
    with pytest.raises(ConfigError, match="max_bytes must be a positive integer"):
        ReferenceCache(max_bytes=0)


def test_calls_it_cannot_key_pass_through(reference: Counting) -> None:
    cache = ReferenceCache()
    x = torch.randn(4, 6)

    def two(args, kwargs):
        return reference((args[0],), {})

    assert cache((x, object()), {}, two).shape == (4, 3)
    assert cache((x, torch.randn(3, 6)), {}, two).shape == (4, 3)  # not batch-first
    assert cache((x,), {"mask": [1, 2]}, lambda a, k: reference(a, {})).shape == (4, 3)
    assert cache.stats.bypassed == 3 and cache.stats.entries == 0


def test_outputs_without_a_row_per_sample_are_not_cached() -> None:
    cache = ReferenceCache()
    x = torch.randn(4, 6)
    out = cache((x,), {}, lambda args, kwargs: args[0].sum(0, keepdim=True))
    assert out.shape == (1, 6) and cache.stats.bypassed == 1 and cache.stats.entries == 0


def test_the_cached_handle_trains_like_the_plain_handle() -> None:
    """The handle's reference_cache: same losses as without the cache, hits from epoch 2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    reference = snapshot_reference(model)
    x, y = torch.randn(24, 6), torch.randint(0, 3, (24,))
    losses = {}
    for cached in (False, True):
        student = copy.deepcopy(model)
        composer = LossComposer(LossConfig())
        cache = ReferenceCache()
        handle = (
            InjectionHandle(student, reference, composer, reference_cache=cache)
            if cached
            else InjectionHandle(student, reference, composer)
        )
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        order = torch.Generator().manual_seed(1)
        values = []
        for _ in range(3):
            for index in torch.randperm(24, generator=order).split(8):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(student(x[index]), y[index])
                loss.backward()
                optimizer.step()
                values.append(loss.item())
        handle.detach()
        losses[cached] = values
        if cached:
            assert cache.stats.misses == 24 and cache.stats.hits == 48
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
