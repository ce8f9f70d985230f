"""Peak memory of one training loop variant, measured in a fresh process of its own.

``python -m labelkeep_plugins.bench.cost_memory CASE VARIANT STEPS`` prints one JSON line.

Why peak RSS, in a process per variant: torch has no allocator statistics for CPU memory
(``torch.cuda.max_memory_allocated`` has no CPU twin) and ``tracemalloc`` does not see
torch's allocations. The kernel keeps the high-water mark of a process's resident memory
(``VmHWM``). On Linux it is reset just before the training loop (``5`` written to
``/proc/self/clear_refs``), so the figure is the loop's own peak, not the larger transient
of importing torch; where that reset is refused, ``getrusage``'s lifetime ``ru_maxrss`` is
used instead and the result says so (it then often hides the loop entirely).
Limits: it counts resident pages, not tensors, so the allocator's caching and page
granularity add noise of about a megabyte; the reference's weights are counted in the
instrumented variants because they are resident, as they are in a user's run. The figure
that matters is the difference against the plain variant.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
from pathlib import Path

import torch

from labelkeep_plugins.bench.cost_models import (
    CASES,
    RepeatingBatches,
    cnn,
    training_step,
)
from labelkeep_plugins.config import LossConfig
from labelkeep_plugins.injector.attach import InjectionHandle
from labelkeep_plugins.loss.composer import LossComposer
from labelkeep_plugins.reference.cache import ReferenceCache
from labelkeep_plugins.reference.snapshot import snapshot_reference

MEMORY_VARIANTS = ("plain", "instrumented", "cached")


def measure(case_index: int, variant: str, steps: int) -> dict[str, object]:
    """Train ``steps`` steps of ``variant``; the process's peak resident memory in bytes."""
    torch.manual_seed(0)
    case = CASES[case_index]
    uncompressed = cnn(case.reference_width)  # the user's model before compression
    reference = snapshot_reference(uncompressed) if variant != "plain" else None
    del uncompressed  # compression replaces it (pruning in place, quantization by copy)
    student = cnn(case.student_width)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3)
    data = RepeatingBatches(case)
    cache = ReferenceCache() if variant == "cached" else None
    handle = _attach(variant, student, reference, cache)
    gc.collect()
    method = _reset_peak()
    for _ in range(steps):
        training_step(student, optimizer, *data.next())
    if handle is not None:
        handle.detach()
    return {
        "case": case.name,
        "variant": variant,
        "steps": steps,
        "peak_rss_bytes": _peak(method),
        "method": method,
        "cache_bytes": cache.stats.bytes if cache is not None else 0,
    }


def _reset_peak() -> str:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); the method the peak is then read by."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return "ru_maxrss (process lifetime)"
    return "VmHWM after clear_refs"


def _peak(method: str) -> int:
    if method.startswith("VmHWM"):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _attach(
    variant: str,
    student: torch.nn.Module,
    reference: torch.nn.Module | None,
    cache: ReferenceCache | None,
) -> InjectionHandle | None:
    if reference is None:
        return None
    composer = LossComposer(LossConfig())
    if cache is not None:
        return InjectionHandle(student, reference, composer, reference_cache=cache)
    return InjectionHandle(student, reference, composer)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in MEMORY_VARIANTS:
        print(
            f"usage: python -m labelkeep_plugins.bench.cost_memory CASE "
            f"{{{'|'.join(MEMORY_VARIANTS)}}} STEPS",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1)  # like the timing, and the same in every variant
    print(json.dumps(measure(int(argv[0]), argv[1], int(argv[2]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
