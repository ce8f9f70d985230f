"""``labelkeep bench --cost``: step time and peak memory of an instrumented loop against plain.

For each case (a student far smaller than its reference, and one of equal size): the
interleaved step-time medians of :mod:`.cost_timing`, and the peak memory of each variant
from :mod:`.cost_memory` (a fresh process each). Ratios are put next to the issue's
targets: instrumented with the cache on repeated inputs <= 1.05 x plain; without the cache
<= 1.05 x (plain + one reference forward); memory above plain <= the reference's
parameters plus one batch of its activations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from labelkeep_plugins.experiments.tables import Column, markdown_table
from labelkeep_plugins.jsonfile import write_json

COST_FILE = "cost.json"
COST_MARKDOWN = "cost.md"
MiB = 2**20


def run_cost(out: Path, *, quick: bool, stream: TextIO) -> int:
    """Measure every case, print the table, write cost.json and cost.md; the exit code."""
    import torch

    from labelkeep_plugins.bench.cost_models import CASES

    torch.set_num_threads(1)
    repetitions, steps, processes = (15, 10, 1) if quick else (100, 40, 3)
    started = time.monotonic()
    results = []
    for index, case in enumerate(CASES):
        print(f"labelkeep bench --cost: {case.name}: timing {repetitions} reps", file=stream)
        results.append(_case(index, case, (repetitions, steps, processes), stream))
    document = {
        "threads": 1,
        "repetitions": repetitions,
        "memory_steps": steps,
        "memory_processes": processes,
        "seconds": round(time.monotonic() - started, 1),
        "cases": results,
        "memory_method": "peak RSS of the training loop (VmHWM reset before it) in a fresh "
        f"process per variant, {steps} steps; median of {processes} process(es)",
    }
    write_json(out / COST_FILE, document)
    text = "\n".join([cost_table(results), "", *cost_notes(document)])
    (out / COST_MARKDOWN).write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {out / COST_FILE} and {out / COST_MARKDOWN}", file=stream)
    return 0


def _case(index: int, case: Any, sizes: tuple[int, int, int], stream: TextIO) -> dict[str, Any]:
    """Timing in this process, then each variant's memory in ``processes`` fresh ones."""
    from labelkeep_plugins.bench.cost_models import (
        RepeatingBatches,
        activation_bytes,
        cnn,
        parameter_bytes,
    )
    from labelkeep_plugins.bench.cost_timing import time_case

    repetitions, steps, processes = sizes
    timings = time_case(case, repetitions, warmup=3)
    reference = cnn(case.reference_width).eval()
    batch, _ = RepeatingBatches(case).next()
    memory = {}
    for variant in ("plain", "instrumented", "cached"):
        print(f"labelkeep bench --cost: {case.name}: memory, {variant}", file=stream)
        runs = [_memory_child(index, variant, steps) for _ in range(processes)]
        memory[variant] = _median_memory(runs)
    return {
        "case": case.name,
        "reference_width": case.reference_width,
        "student_width": case.student_width,
        "batch": case.batch,
        "times": timings.to_dict(),
        "ratios": ratios(timings.to_dict()),
        "memory": memory,
        "memory_bound_bytes": parameter_bytes(reference) + activation_bytes(reference, batch),
    }


def ratios(times: dict[str, dict[str, float]]) -> dict[str, float]:
    """The issue's ratios from the median step times."""
    med = {variant: figures["median_ms"] for variant, figures in times.items()}
    return {
        "instrumented_vs_plain": med["instrumented"] / med["plain"],
        "instrumented_vs_plain_plus_forward": med["instrumented"]
        / (med["plain"] + med["reference_forward"]),
        "handwritten_kd_vs_plain_plus_forward": med["handwritten_kd"]
        / (med["plain"] + med["reference_forward"]),
        "instrumented_vs_handwritten_kd": med["instrumented"] / med["handwritten_kd"],
        "default_tuner_vs_instrumented": med["default_tuner"] / med["instrumented"],
        "cached_vs_plain": med["cached"] / med["plain"],
        "cached_fresh_vs_instrumented": med["cached_fresh"] / med["instrumented"],
        "fingerprint_vs_forward": med["fingerprint"] / med["reference_forward"],
    }


def _median_memory(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The measurement with the median peak (an error if any process failed)."""
    failed = [m for m in measured if "error" in m]
    if failed:
        return failed[0]
    ordered = sorted(measured, key=lambda m: m["peak_rss_bytes"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["peak_rss_bytes_all"] = [m["peak_rss_bytes"] for m in measured]
    return chosen


def _memory_child(index: int, variant: str, steps: int) -> dict[str, Any]:
    """One variant's peak memory from a fresh interpreter (one thread, like the timing)."""
    command = [sys.executable, "-m", "labelkeep_plugins.bench.cost_memory"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [*command, str(index), variant, str(steps)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-3:]
        return {"error": f"exit code {completed.returncode}: {' / '.join(tail)}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


COST_COLUMNS = tuple(
    Column(header, "left" if header == "case" else "right")
    for header in (
        "case",
        "plain step ms",
        "reference fwd ms",
        "hand-written KD ms (x plain+fwd)",
        "instrumented ms (x plain; x plain+fwd; x hand-written)",
        "+ default tuner ms (x instrumented)",
        "cached, repeated ms (x plain)",
        "cached, new inputs ms",
        "fingerprint ms",
        "peak RSS plain MiB",
        "+ instrumented MiB",
        "+ cached MiB",
        "bound MiB",
    )
)


def cost_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per case, times in ms, memory in MiB above plain."""
    rows = []
    for r in results:
        t = {v: f["median_ms"] for v, f in r["times"].items()}
        q = r["ratios"]
        rows.append(
            (
                r["case"],
                f"{t['plain']:.2f}",
                f"{t['reference_forward']:.2f}",
                f"{t['handwritten_kd']:.2f} ({q['handwritten_kd_vs_plain_plus_forward']:.2f}x)",
                f"{t['instrumented']:.2f} ({q['instrumented_vs_plain']:.2f}x; "
                f"{q['instrumented_vs_plain_plus_forward']:.2f}x; "
                f"{q['instrumented_vs_handwritten_kd']:.2f}x)",
                f"{t['default_tuner']:.2f} ({q['default_tuner_vs_instrumented']:.2f}x)",
                f"{t['cached']:.2f} ({q['cached_vs_plain']:.2f}x)",
                f"{t['cached_fresh']:.2f}",
                f"{t['fingerprint']:.3f}",
                *_memory_cells(r),
            )
        )
    return markdown_table(COST_COLUMNS, rows)


def cost_notes(document: dict[str, Any]) -> list[str]:
    """How the figures were taken, and the issue's targets next to them."""
    return [
        f"Step times: median of {document['repetitions']} interleaved repetitions per "
        f"variant, 1 thread, batch of 128 MNIST-1D-shaped inputs; 'cached, repeated': every "
        "sample seen before (reshuffled batches); 'new inputs': every sample new; "
        "'hand-written KD': the default loss (cross-entropy + KD at T 4) written into the "
        "loop, no labelkeep: what the two models' forwards and backward cost together, so "
        "'x hand-written' is labelkeep's own overhead.",
        f"Memory: {document['memory_method']}; '+' columns are above plain; bound: the "
        "reference's parameters and buffers plus one batch of its activations.",
        "Targets (issue 5): cached, repeated <= 1.05x plain; instrumented <= 1.05x "
        "(plain + reference forward); memory above plain <= bound.",
    ]


def _memory_cells(result: dict[str, Any]) -> tuple[str, str, str, str]:
    memory = result["memory"]
    bound = f"{result['memory_bound_bytes'] / MiB:.1f}"
    if any("error" in memory[v] for v in memory):
        errors = "; ".join(f"{v}: {m['error']}" for v, m in memory.items() if "error" in m)
        return f"failed ({errors})", "", "", bound
    plain = memory["plain"]["peak_rss_bytes"]
    extra = [(memory[v]["peak_rss_bytes"] - plain) / MiB for v in ("instrumented", "cached")]
    return f"{plain / MiB:.1f}", f"{extra[0]:+.1f}", f"{extra[1]:+.1f}", bound
