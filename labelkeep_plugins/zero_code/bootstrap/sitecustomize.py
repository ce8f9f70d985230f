"""Started by Python itself in every process of a ``labelkeep run`` command.

Activates labelkeep, then runs any ``sitecustomize`` that this one shadows. In strict mode a
labelkeep that cannot start ends the process (exit 2) before its script runs.
"""

import importlib.util
import os
import sys


def _chain_next_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location(
                "_labelkeep_chained_sitecustomize", candidate
            )
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


def _not_active(message: str) -> None:
    """Through labelkeep's logger when at least that much of labelkeep imports, else print."""
    try:
        from labelkeep_plugins.log import logger
    except ImportError:  # labelkeep is not installed for this interpreter at all
        print(f"labelkeep: {message}", file=sys.stderr)
    else:
        logger.warning(message)


try:
    from labelkeep_plugins.zero_code.auto import activate_from_environment, refuse_to_start
except ImportError as exc:  # another interpreter without labelkeep installed
    _not_active(f"not active in {sys.executable} ({exc})")
else:
    try:
        activate_from_environment()
    except Exception as exc:  # strict mode only: otherwise a failure is told and contained
        refuse_to_start(exc)  # exits 2; a raise here would only print "Error in sitecustomize"
finally:
    _chain_next_sitecustomize()
