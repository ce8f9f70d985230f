"""The built-in tuners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.tuners.base import FixedTuner
from labelkeep_plugins.tuners.catchup import CatchUpTuner
from labelkeep_plugins.tuners.softadapt import SoftAdaptTuner


@hookimpl
def labelkeep_register_tuners(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register(FixedTuner.name, FixedTuner)
    register(SoftAdaptTuner.name, SoftAdaptTuner)
    register(CatchUpTuner.name, CatchUpTuner)
