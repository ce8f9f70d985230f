"""Tests for the frozen reference: snapshot, unwrap, checksum, as_reference."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import TinyCNN
from torch import nn

from labelkeep_plugins.errors import SnapshotError
from labelkeep_plugins.reference.snapshot import (
    as_reference,
    checksum,
    is_snapshot,
    move_to,
    snapshot_reference,
    unwrap_model,
)


def storage_pointers(module: nn.Module) -> set[int]:
    return {
        tensor.untyped_storage().data_ptr()
        for tensor in [*module.parameters(), *module.buffers()]
        if tensor.numel()
    }


def test_snapshot_is_frozen_and_independent(reference_model, batch):
    reference_model.train()
    inputs, _ = batch
    snapshot = snapshot_reference(reference_model)
    assert snapshot is not reference_model
    assert type(snapshot) is type(reference_model)
    assert reference_model.training  # the source keeps its mode
    assert all(not module.training for module in snapshot.modules())
    assert all(not p.requires_grad for p in snapshot.parameters())
    assert all(not b.requires_grad for b in snapshot.buffers())
    assert all(p.requires_grad for p in reference_model.parameters())
    assert not storage_pointers(snapshot) & storage_pointers(reference_model)
    assert all(snapshot is not m for m in reference_model.modules())
    assert checksum(snapshot) == checksum(reference_model)
    reference_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(snapshot(inputs), reference_model(inputs), rtol=0, atol=0)
    assert is_snapshot(snapshot) and not is_snapshot(reference_model)


def test_snapshot_does_not_follow_later_changes(reference_model, batch):
    snapshot = snapshot_reference(reference_model)
    before = checksum(snapshot)
    inputs, targets = batch
    optimizer = torch.optim.SGD(reference_model.parameters(), lr=0.5)
    reference_model.train()
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(reference_model(inputs), targets).backward()
        optimizer.step()
    assert checksum(reference_model) != before
    assert checksum(snapshot) == before


def test_snapshot_is_made_without_the_students_hooks(reference_model, batch):
    lock = threading.Lock()
    generator = (i for i in range(3))
    calls = []

    def uncopyable_hook(module, args, output):
        with lock:
            next(generator, None)

    def counting_hook(module, args, output):
        calls.append(type(module).__name__)

    def counting_pre_hook(module, args, kwargs):
        calls.append("pre")

    reference_model.register_forward_hook(uncopyable_hook)
    reference_model.register_forward_hook(counting_hook)
    reference_model.fc.register_forward_hook(counting_hook)
    reference_model.register_forward_pre_hook(counting_pre_hook, with_kwargs=True)
    reference_model.register_full_backward_hook(lambda *args: calls.append("backward"))

    snapshot = snapshot_reference(reference_model)
    inputs, _ = batch
    with torch.no_grad():
        snapshot(inputs)
    assert calls == []
    for module in snapshot.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    # The student keeps its hooks.
    reference_model(inputs.clone().requires_grad_(True)).sum().backward()
    assert calls.count("TinyCNN") == 1 and calls.count("Linear") == 1
    assert calls.count("pre") == 1 and calls.count("backward") == 1


def test_unwrap_torch_compile(reference_model):
    compiled = torch.compile(reference_model, backend="eager")
    assert compiled is not reference_model
    assert unwrap_model(compiled) is reference_model
    snapshot = snapshot_reference(compiled)
    assert type(snapshot) is TinyCNN
    assert checksum(snapshot) == checksum(reference_model)


def test_unwrap_data_parallel(reference_model):
    try:
        wrapped = nn.DataParallel(reference_model)
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"DataParallel cannot be built here: {exc}")
    assert unwrap_model(wrapped) is reference_model
    assert type(snapshot_reference(wrapped)) is TinyCNN
    assert unwrap_model(reference_model) is reference_model


def test_unwrap_nested_wrappers(reference_model):
    wrapped = torch.compile(nn.DataParallel(reference_model), backend="eager")
    assert unwrap_model(wrapped) is reference_model


class HoldsALock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.linear = nn.Linear(2, 2)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.good = nn.Linear(2, 2)
        self.bad = HoldsALock()
        self.after = nn.Linear(2, 2)


def test_uncopyable_submodule_is_named():
    with pytest.raises(SnapshotError) as info:
        snapshot_reference(Outer())
    message = str(info.value)
    assert "'bad'" in message
    assert "lock" in message


def test_snapshot_error_does_not_leave_hooks_removed():
    model = Outer()
    calls = []
    model.good.register_forward_hook(lambda *args: calls.append(1))
    hooks = model.good._forward_hooks
    with pytest.raises(SnapshotError):
        snapshot_reference(model)
    assert model.good._forward_hooks is hooks
    model.good(torch.zeros(1, 2))
    assert calls == [1]


def test_snapshot_of_non_module():
    with pytest.raises(SnapshotError, match=r"torch\.nn\.Module"):
        snapshot_reference(lambda x: x)  # type: ignore[arg-type]


def test_checksum_sees_one_ulp(reference_model):
    before = checksum(reference_model)
    assert checksum(reference_model) == before  # deterministic
    with torch.no_grad():
        weight = reference_model.fc.weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(float("inf")))
    after = checksum(reference_model)
    assert after != before


def test_checksum_sees_buffers(reference_model):
    before = checksum(reference_model)
    reference_model.bn.running_mean[1] += 1e-3
    assert checksum(reference_model) != before
    reference_model.bn.running_mean[1] -= 1e-3
    reference_model.bn.num_batches_tracked += 1
    assert checksum(reference_model) != before


def test_checksum_sees_dtype_and_handles_low_precision(reference_model):
    before = checksum(reference_model)
    same = TinyCNN()
    same.load_state_dict(reference_model.state_dict())
    assert checksum(same) == before
    assert checksum(same.to(torch.bfloat16)) != before


def test_as_reference(reference_model):
    snapshot = snapshot_reference(reference_model)
    assert as_reference(snapshot) is snapshot
    other = as_reference(reference_model)
    assert other is not reference_model
    assert is_snapshot(other)
    assert checksum(other) == checksum(reference_model)
    assert as_reference(other) is other


def test_move_to_same_device_is_a_no_op(reference_model):
    snapshot = snapshot_reference(reference_model)
    pointers = storage_pointers(snapshot)
    assert move_to(snapshot, torch.device("cpu")) is snapshot
    assert storage_pointers(snapshot) == pointers


def test_snapshot_of_a_model_pruned_with_torch_prune() -> None:
    """torch.nn.utils.prune keeps a computed weight that deepcopy refuses; the snapshot copes."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    x = torch.randn(4, 6)
    with torch.no_grad():
        expected = model(x)
    reference = snapshot_reference(model)
    with torch.no_grad():
        model[0].weight_orig.add_(1.0)  # training the student moves weight_orig only
        assert not torch.allclose(model(x), expected)
        torch.testing.assert_close(reference(x), expected)
    assert reference[0].weight_mask.mean().item() == 0.5  # still pruned: the mask came along
