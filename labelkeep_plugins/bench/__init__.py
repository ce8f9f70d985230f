"""``labelkeep bench``: does labelkeep keep labels, across frameworks, and what does it cost?

For each framework x dataset x compression level cell a user-style script (``scripts/``)
compresses a pretrained model and recovers it; the bench runs it through ``labelkeep run``
(the path users take, in child processes, ``--jobs`` at a time) with plain recovery, its
noise floor, labelkeep's defaults, SoftAdapt and (``--full``) the configuration ``labelkeep
tune`` finds on validation seeds, the fm term, 3x the recovery epochs and a long
distillation limit, over several evaluation seeds; it reports accuracy against a guard,
mismatches, negative flips and reduction factors against plain with bootstrap intervals.
``--cost`` measures the step time and memory of an instrumented training loop.

Modules, one job each: :mod:`.cells` (the grid and profiles), :mod:`.plan` (runs, budgets,
commands, configurations), :mod:`.rows` (which rows run), :mod:`.execute` (one run),
:mod:`.pool` (runs at a time), :mod:`.tuned` (tuning per cell), :mod:`.orchestrate` (the
loop), :mod:`.store` (results.json and resume), :mod:`.stats` (ratios and the bootstrap),
:mod:`.aggregate` (rows), :mod:`.headline`, :mod:`.render` (tables), :mod:`.plot`,
:mod:`.outputs` (the files), :mod:`.progress`, :mod:`.session` (one invocation),
:mod:`.command` (the CLI), :mod:`.sweep` (loss settings of one's own over the cells); for
``--cost``: :mod:`.cost_models`, :mod:`.cost_timing` (interleaved step times),
:mod:`.cost_memory` (peak memory, one process per variant) and :mod:`.cost`. The
user-style scripts are in ``scripts/``.
"""
