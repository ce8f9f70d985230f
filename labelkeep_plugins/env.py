"""Every ``LABELKEEP_*`` environment variable, in one place.

The host (plugins, config) and zero-code activation (runner, auto mode, NNI trials) all read
them; naming each once here keeps them from drifting apart.
"""

from __future__ import annotations

AUTO_ENV = "LABELKEEP_AUTO"  # set by the runner: activate in this process
CONFIG_ENV = "LABELKEEP_CONFIG"  # the config file auto mode reads
REPORT_ENV = "LABELKEEP_REPORT"  # where the run report goes
STRICT_ENV = "LABELKEEP_STRICT"  # a labelkeep that cannot start stops the run
ROOT_PID_ENV = "LABELKEEP_ROOT_PID"  # the command's own process, which owns the report
AUTOLOAD_OFF_ENV = "LABELKEEP_DISABLE_PLUGIN_AUTOLOAD"  # no entry-point plugins
ALLOW_LIST_ENV = "LABELKEEP_PLUGINS"  # only these entry-point plugins
DISABLED_ADAPTERS_ENV = "LABELKEEP_DISABLED_ADAPTERS"  # adapters to skip
PARAMETERS_ENV = "LABELKEEP_NNI_PARAMETERS"  # an NNI trial's parameters, for tests and reruns
