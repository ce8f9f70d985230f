"""Run a bench script once per seed, all in this one process (the bench's tuning runs).

    python _multiseed.py SCRIPT --seeds 1000,1001 [the script's other arguments]

Under ``labelkeep run`` every seed's model gets its own reference, and the run report
sums the agreement of every model's last evaluation pass, so a tuning trial is judged on
all the seeds together rather than on one seed's luck. With one seed it is the script.
"""

from __future__ import annotations

import runpy
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--seeds":
        print("usage: python _multiseed.py SCRIPT --seeds S1,S2,... [ARGS...]", file=sys.stderr)
        return 2
    script, seeds, rest = argv[0], argv[2], argv[3:]
    for seed in (s.strip() for s in seeds.split(",") if s.strip()):
        sys.argv = [script, "--seed", seed, *rest]
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
