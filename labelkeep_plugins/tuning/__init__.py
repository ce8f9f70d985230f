"""Weight tuning by search: the objective, the NNI search space, ``labelkeep tune`` and NNI trials.

Nothing here imports NNI or torch at import time: ``labelkeep-run`` imports
:mod:`labelkeep_plugins.tuning.nni_trial` (a built-in plugin) wherever plugins load, and NNI is
optional (without it ``labelkeep tune`` falls back to an in-process random search).
"""

from __future__ import annotations

from labelkeep_plugins.experiments.objective import (
    Measurement,
    NoAgreementError,
    Ranked,
    measurement_from_report,
    rank,
)
from labelkeep_plugins.tuning.space import (
    default_search_space,
    parameters_to_loss,
    read_search_space,
    validate_search_space,
)

__all__ = [
    "Measurement",
    "NoAgreementError",
    "Ranked",
    "default_search_space",
    "measurement_from_report",
    "parameters_to_loss",
    "rank",
    "read_search_space",
    "validate_search_space",
]
