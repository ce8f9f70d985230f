"""``labelkeep bench``: does labelkeep keep labels, across frameworks, and what does it cost?

For each framework x dataset cell a user-style script (``scripts/``) compresses a
pretrained model and recovers it; the bench runs it through ``labelkeep run`` (the path
users take, in a child process) with plain recovery, labelkeep's defaults and the
configuration ``labelkeep tune`` finds on a validation seed, over several evaluation seeds,
and reports accuracy, mismatches, negative flips and reduction factors against plain.
``--cost`` measures the step time and memory of an instrumented training loop.

Modules, one job each: :mod:`.cells` (the grid), :mod:`.plan` (runs and commands),
:mod:`.execute` (one run), :mod:`.tuned` (tuning per cell), :mod:`.orchestrate` (the loop),
:mod:`.store` (results.json and resume), :mod:`.aggregate` (figures), :mod:`.render`
(tables), :mod:`.plot`, :mod:`.outputs` (the files), :mod:`.progress`, :mod:`.session`
(one invocation), :mod:`.command` (the CLI); for ``--cost``: :mod:`.cost_models`,
:mod:`.cost_timing` (interleaved step times), :mod:`.cost_memory` (peak memory, one
process per variant) and :mod:`.cost`. The user-style scripts are in ``scripts/``.
"""
