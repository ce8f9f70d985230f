"""Started by Python itself in every process of a ``labelkeep run`` command.

Activates labelkeep, then runs any ``sitecustomize`` that this one shadows.
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


try:
    from labelkeep_plugins.auto import activate_from_environment
except ImportError as exc:  # another interpreter without labelkeep installed
    print(f"labelkeep: not active in {sys.executable} ({exc})", file=sys.stderr)
else:
    activate_from_environment()
finally:
    _chain_next_sitecustomize()
