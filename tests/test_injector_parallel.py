"""The injector under AMP (GradScaler), torch.compile and DDP (gloo, 2 CPU processes).

Same method as test_injector.py: the injected gradients of the unchanged user step must
equal those of the explicit combined loss, and differ from the plain ones.
"""

from __future__ import annotations

import contextlib
import copy
import faulthandler
import gc
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import TinyCNN, perturbed
from test_injector import (
    CUSTOM_LOSSES,
    Explicit,
    Grads,
    assert_grads_differ,
    assert_grads_equal,
    grads_of,
    loss_setup,
    run,
    run_injected,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from labelkeep_plugins import attach, snapshot_reference

INIT_SCALE = 1024.0


def autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster, and immune to busy cores (2-core CI)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- 5. AMP: torch.autocast(bf16) + torch.amp.GradScaler("cpu") ----------------------------


def test_grad_scaler_is_enabled_on_cpu():
    assert torch.amp.GradScaler("cpu", init_scale=INIT_SCALE).is_enabled()


@pytest.mark.parametrize(
    ("config", "backward_in_autocast"),
    [("default", False), ("weighted", False), ("weighted", True)],
)
@pytest.mark.parametrize("path", ["loss_value", "gradient"])
def test_amp_grad_scaler_scaled_gradients(
    student, reference_model, batch, path, config, backward_in_autocast
):
    x, y = batch
    attach_kwargs, loss_config = loss_setup(config)
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_config)
    custom = CUSTOM_LOSSES["mse_softmax"]

    def user(model: nn.Module) -> None:
        scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
        with autocast():
            logits = model(x)
            assert logits.dtype == torch.bfloat16
            loss = F.cross_entropy(logits, y) if path == "loss_value" else custom(logits, y)
            if backward_in_autocast:  # discouraged, but common
                scaler.scale(loss).backward()
        if not backward_in_autocast:
            scaler.scale(loss).backward()

    def combined(model: nn.Module) -> None:
        scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
        with autocast():
            logits = model(x)
            loss = (
                explicit.ce(logits, x, y)
                if path == "loss_value"
                else explicit.custom(custom(logits, y), logits, x)
            )
            if backward_in_autocast:
                scaler.scale(loss).backward()
        if not backward_in_autocast:
            scaler.scale(loss).backward()

    got, stats = run_injected(student, reference, user, **attach_kwargs)
    want = run(student, combined)
    # Scaled gradients, before unscale_ (measured: bit-identical; the scale is a power of 2).
    assert_grads_equal(got, want)
    assert_grads_differ(
        {k: v / INIT_SCALE for k, v in got.items()},
        {k: v / INIT_SCALE for k, v in run(student, user).items()},
    )
    assert stats["via_gradient" if path == "gradient" else "via_loss_value"] == 1


@pytest.mark.parametrize("path", ["loss_value", "gradient"])
def test_amp_grad_scaler_unscaled_gradients_tight(student, reference_model, batch, path):
    """GradScaler without autocast (fp32), gradients compared after ``unscale_``."""
    x, y = batch
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_setup("weighted")[1])
    custom = CUSTOM_LOSSES["hand_nll"]

    def loop(model: nn.Module, loss_of) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
        logits = model(x)
        scaler.scale(loss_of(logits)).backward()
        scaler.unscale_(optimizer)

    def user_loss(logits):
        return F.cross_entropy(logits, y) if path == "loss_value" else custom(logits, y)

    def combined_loss(logits):
        return (
            explicit.ce(logits, x, y)
            if path == "loss_value"
            else explicit.custom(custom(logits, y), logits, x)
        )

    got, _ = run_injected(
        student, reference, lambda m: loop(m, user_loss), **loss_setup("weighted")[0]
    )
    assert_grads_equal(got, run(student, lambda m: loop(m, combined_loss)))
    assert_grads_differ(got, run(student, lambda m: loop(m, user_loss)))


def test_amp_no_stale_scale_after_update(student, reference_model, batch):
    """After scaler.update(), an unscaled backward must not get the old scale on its extra."""
    x, y = batch
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_setup("default")[1])
    custom = CUSTOM_LOSSES["mse_softmax"]

    def loop(model: nn.Module, loss_of) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
        with autocast():
            logits = model(x)
            loss = loss_of(logits)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)  # fp32, no scaler: e.g. a plain fine-tuning phase afterwards
        loss_of(logits).backward()

    got, stats = run_injected(student, reference, lambda m: loop(m, lambda lg: custom(lg, y)))
    want = run(student, lambda m: loop(m, lambda lg: explicit.custom(custom(lg, y), lg, x)))
    assert stats["via_gradient"] == 2
    assert_grads_equal(got, want)
    assert_grads_differ(got, run(student, lambda m: loop(m, lambda lg: custom(lg, y))))


# --- 7. torch.compile ----------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


COMPILE_CASES = [
    ("torch_compile_module", "loss_value", "before_first_call"),
    ("torch_compile_module", "loss_value", "after_first_call"),
    ("torch_compile_module", "gradient", "before_first_call"),
    ("torch_compile_module", "gradient", "after_first_call"),
    ("module_compile_method", "loss_value", "after_first_call"),
    ("module_compile_method", "gradient", "after_first_call"),
    ("compiled_training_step", "loss_value", "after_first_call"),
    ("compiled_training_step", "gradient", "before_first_call"),
    # dynamo does not guard on module hooks: without a reset in attach() this one
    # silently keeps running the hook-less graph (found by this test, fixed in attach.py)
    ("compiled_training_step", "gradient", "after_first_call"),
]


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize(("api", "path", "when"), COMPILE_CASES)
def test_compile_aot_eager(student, reference_model, batch, api, path, when):
    """aot_eager; hooks installed before or after the first compiled call; attach is on the
    uncompiled module. ``api``: ``torch.compile(student)``, ``student.compile()`` (which
    compiles ``_call_impl``, so dynamo meets the forward hook), or a compiled function
    that runs the forward and the user's loss (dynamo meets the patched cross_entropy)."""
    x, y = batch
    reference = snapshot_reference(reference_model)
    attach_kwargs, loss_config = loss_setup("weighted")
    explicit = Explicit(reference, loss_config)
    custom = CUSTOM_LOSSES["mse_softmax"]

    def user_loss(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y) if path == "loss_value" else custom(logits, y)

    from torch._dynamo.testing import CompileCounterWithBackend  # not in the DDP workers

    counter = CompileCounterWithBackend("aot_eager")
    model = copy.deepcopy(student)
    if api == "torch_compile_module":
        compiled = torch.compile(model, backend=counter)
        step = lambda: user_loss(compiled(x))  # noqa: E731
    elif api == "module_compile_method":
        model.compile(backend=counter)
        step = lambda: user_loss(model(x))  # noqa: E731
    else:
        step = torch.compile(lambda: user_loss(model(x)), backend=counter)
    if when == "after_first_call":
        step().backward()  # compiled without hooks
        model.zero_grad(set_to_none=True)
    with attach(model, reference, **attach_kwargs) as handle:
        step().backward()
    got = grads_of(model)
    assert counter.frame_count >= 1  # dynamo did compile graphs
    assert handle.stats.training_forwards == 1
    assert handle.stats.via_loss_value + handle.stats.via_gradient == 1

    def combined(m: nn.Module) -> None:
        logits = m(x)
        loss = (
            explicit.ce(logits, x, y)
            if path == "loss_value"
            else explicit.custom(custom(logits, y), logits, x)
        )
        loss.backward()

    def user(m: nn.Module) -> None:
        user_loss(m(x)).backward()

    # aot_eager runs the eager aten ops (measured: 0 difference); allow a few fp32 ulps
    # for decompositions (batch norm) that may reorder sums in other torch versions.
    assert_grads_equal(got, run(student, combined), atol=1e-5, rtol=1e-4)
    assert_grads_differ(got, run(student, user))

    # After detach the compiled code must not call the hook any more.
    model.zero_grad(set_to_none=True)
    step().backward()
    assert handle.stats.forwards == 1
    assert_grads_equal(grads_of(model), run(student, user), atol=1e-5, rtol=1e-4)


# --- 6. DDP, gloo, 2 CPU processes ---------------------------------------------------------

WORLD_SIZE = 2
DDP_TIMEOUT_S = 120
DDP_STACKS_AFTER_S = 30  # a worker still running then writes its Python stacks (for a hang)


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 16, generator=generator), torch.randint(0, 5, (8,), generator=generator)


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference_model = TinyCNN()
    return perturbed(reference_model), snapshot_reference(reference_model)


def _ddp_step(
    model: nn.Module,
    loss_of: Callable[..., torch.Tensor],
    path: str,
    x: torch.Tensor,
    y: torch.Tensor,
) -> None:
    """Loss-value path: two micro-batches, each loss / 2, the first under ``no_sync``
    (accumulation, like a real DDP loop). Gradient path: one backward of the whole batch
    (that path is exact for one backward per step)."""
    if path == "gradient":
        loss_of(model(x), x, y).backward()
        return
    (x1, x2), (y1, y2) = x.split(4), y.split(4)
    is_ddp = isinstance(model, DistributedDataParallel)
    with model.no_sync() if is_ddp else contextlib.nullcontext():
        (loss_of(model(x1), x1, y1) / 2).backward()
    (loss_of(model(x2), x2, y2) / 2).backward()


def _user_loss(path: str) -> Callable[..., torch.Tensor]:
    custom = CUSTOM_LOSSES["mse_softmax"]
    if path == "loss_value":
        return lambda logits, x, y: F.cross_entropy(logits, y)
    return lambda logits, x, y: custom(logits, y)


def _explicit_loss(explicit: Explicit, path: str) -> Callable[..., torch.Tensor]:
    custom = CUSTOM_LOSSES["mse_softmax"]
    if path == "loss_value":
        return explicit.ce
    return lambda logits, x, y: explicit.custom(custom(logits, y), logits, x)


# case -> (path, attach to the DDP wrapper or to ddp.module, DistributedDataParallel kwargs)
DDP_CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "loss_value": ("loss_value", "wrapper", {}),
    "loss_value_find_unused": ("loss_value", "wrapper", {"find_unused_parameters": True}),
    "loss_value_inner_module": ("loss_value", "inner", {}),
    "gradient": ("gradient", "wrapper", {}),
}


def _ddp_case(rank: int, path: str, where: str, ddp_kwargs: dict[str, Any]) -> dict[str, Any]:
    """One case on this rank: the same step on injected, explicit and plain DDP copies."""
    student, reference = _models()
    attach_kwargs, loss_config = loss_setup("weighted")
    explicit = Explicit(reference, loss_config)
    x, y = _rank_batch(rank)
    injected, combined, plain = (
        DistributedDataParallel(copy.deepcopy(student), **ddp_kwargs) for _ in range(3)
    )
    target = injected if where == "wrapper" else injected.module
    with attach(target, reference, **attach_kwargs) as handle:
        _ddp_step(injected, _user_loss(path), path, x, y)
    _ddp_step(combined, _explicit_loss(explicit, path), path, x, y)
    _ddp_step(plain, _user_loss(path), path, x, y)
    return {
        "injected": grads_of(injected.module),
        "explicit": grads_of(combined.module),
        "plain": grads_of(plain.module),
        "stats": handle.stats.as_dict(),
    }


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    stacks = (Path(out_dir) / f"rank{rank}.stacks").open("w")  # open until the process exits
    faulthandler.dump_traceback_later(DDP_STACKS_AFTER_S, file=stacks)
    torch.set_num_threads(1)
    if Path("/sys/class/net/lo").exists():
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's own sockets on loopback too
    timeout = timedelta(seconds=60)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE, timeout=timeout)
    try:
        results = {case: _ddp_case(rank, *spec) for case, spec in DDP_CASES.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        # Free every DDP reducer while the peer is still connected, then leave together:
        # tearing them down after the other rank had exited hung about 1 run in 8.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    # The parent owns the rendezvous store, bound to a free port on 127.0.0.1 by the OS
    # (port 0): no window in which another process could take the port.
    store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    )
    context = mp.start_processes(
        _ddp_worker,
        args=(store.port, str(out_dir)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DDP_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            stacks = "\n".join(path.read_text() for path in sorted(out_dir.glob("*.stacks")))
            pytest.fail(f"DDP workers did not finish within {DDP_TIMEOUT_S} s; stacks:\n{stacks}")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("case", list(DDP_CASES))
def test_ddp_matches_explicit_loss_on_every_rank(ddp_results, case):
    path = DDP_CASES[case][0]
    for rank, result in enumerate(ddp_results):
        per_case = result[case]
        assert_grads_equal(per_case["injected"], per_case["explicit"])
        assert_grads_differ(per_case["injected"], per_case["plain"])
        stats = per_case["stats"]
        expected = (2, 0) if path == "loss_value" else (0, 1)
        assert (stats["via_loss_value"], stats["via_gradient"]) == expected, f"rank {rank}"


@pytest.mark.parametrize("case", list(DDP_CASES))
def test_ddp_ranks_agree_and_equal_the_average_of_local_explicit_losses(ddp_results, case):
    path = DDP_CASES[case][0]
    first, second = (result[case]["injected"] for result in ddp_results)
    for name in first:  # all-reduced: bit-identical on both ranks
        assert torch.equal(first[name], second[name]), name
    student, reference = _models()
    explicit = Explicit(reference, loss_setup("weighted")[1])
    local: list[Grads] = [
        run(
            student,
            lambda m, r=rank: _ddp_step(m, _explicit_loss(explicit, path), path, *_rank_batch(r)),
        )
        for rank in range(WORLD_SIZE)
    ]
    average = {name: (local[0][name] + local[1][name]) / WORLD_SIZE for name in local[0]}
    assert_grads_equal(first, average)
