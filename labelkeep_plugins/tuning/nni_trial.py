"""Inside an NNI trial: the trial's parameters set the loss, the agreement goes back to NNI.

An NNI experiment whose ``trialCommand`` is ``labelkeep-run python train.py`` starts the
runner in each trial. This module is a built-in plugin: auto mode's
``labelkeep_auto_config`` hook reaches :func:`prepare_config` before instrumenting, and its
``labelkeep_session_started`` hook reaches :func:`start_reporting` after. Then:

* the first instrumented process (the trial's own) calls ``nni.get_next_parameter()``
  once, lays the parameters over the configured loss (keys that are not labelkeep's,
  such as the user's own learning rate, are left to the script), and hands them to its
  child processes (``torchrun`` workers) through ``LABELKEEP_NNI_PARAMETERS``;
* a later ``nni.get_next_parameter()`` in the script returns the same parameters (NNI
  would return None to a second call), so scripts that tune their own settings still work;
* each evaluation pass (evaluation batches up to the next training step) is reported with
  ``nni.report_intermediate_result``; at exit ``nni.report_final_result`` gets
  ``{"default": mismatches, "negative_flips": ..., "accuracy": ..., ...}`` over all
  evaluation passes, the figures of the run report. Use ``optimize_mode: minimize``.

Nothing here may stop the user's run: a failing NNI call costs one line on stderr
(``strict`` mode raises instead, when the parameters cannot be applied).
"""

from __future__ import annotations

import atexit
import copy
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelkeep_plugins.config import Config
from labelkeep_plugins.env import PARAMETERS_ENV
from labelkeep_plugins.experiments.objective import Measurement, measurement_from_report
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.log import logger
from labelkeep_plugins.patching import PatchSet
from labelkeep_plugins.tuning.space import parameters_to_loss

if TYPE_CHECKING:
    from labelkeep_plugins.zero_code.report_schema import RunReport
    from labelkeep_plugins.zero_code.session import Session

REPORT_NAME = "labelkeep-report.json"
PLUGIN_NAME = "labelkeep-nni-trial"


class _Trial:
    """This process's part in the trial: whether it fetched the parameters, what NNI got."""

    owner = False
    script_reported_final = False
    report_final: Callable[[Any], None] | None = None
    patches: PatchSet | None = None  # NNI's functions labelkeep wraps for the script


def in_nni_trial(environ: Mapping[str, str] | None = None) -> bool:
    """NNI's own rule for a trial (``set_default_trial_command_channel`` in NNI 3.0).

    A trial has a command channel URL (``NNI_TRIAL_COMMAND_CHANNEL``, NNI 3 training
    services) or ``NNI_PLATFORM`` set to anything but ``unittest``; otherwise NNI runs
    "standalone" and ``get_next_parameter()`` has nothing to give.
    """
    env = os.environ if environ is None else environ
    if env.get("NNI_TRIAL_COMMAND_CHANNEL"):
        return True
    platform = env.get("NNI_PLATFORM")
    return bool(platform) and platform != "unittest"


def prepare_config(config: Config) -> Config:
    """``config`` with the trial's loss and a report in the trial's output folder."""
    if not in_nni_trial():
        return config
    try:
        config = _with_trial_report(config)
        parameters = _trial_parameters()
        if parameters:
            loss = parameters_to_loss(parameters, config.loss, ignore_unknown=True)
            config = replace(config, loss=loss, tuner="fixed")  # the trial's weights, as given
    except Exception as exc:
        if config.strict:
            raise
        _warn(
            f"cannot take the loss weights from NNI ({type(exc).__name__}: {exc}); "
            "this trial runs with the configured loss"
        )
    return config


@hookimpl
def labelkeep_auto_config(config: Config) -> Config:
    return prepare_config(config)


@hookimpl
def labelkeep_session_started(session: Session) -> None:
    start_reporting(session)


def start_reporting(session: Any) -> None:
    """In the process that fetched the parameters: intermediate results, final at exit."""
    if not _Trial.owner:
        return
    try:
        from labelkeep_plugins.plugins import load_plugins

        pm = load_plugins()
        reporter = pm.get_plugin(PLUGIN_NAME)
        if reporter is None:
            reporter = PassReporter()
            pm.register(reporter, name=PLUGIN_NAME)
        atexit.register(report_final, session, reporter)
    except Exception as exc:
        _warn(f"cannot report to NNI ({type(exc).__name__}: {exc})")


def final_metric(measured: Measurement) -> dict[str, float | int]:
    """The metric NNI gets: ``default`` is the mismatch count (minimize it)."""
    metric: dict[str, float | int] = {
        "default": measured.mismatches,
        "mismatches": measured.mismatches,
        "mismatch_rate": measured.mismatch_rate,
        "samples": measured.samples,
    }
    if measured.negative_flips is not None:
        metric["negative_flips"] = measured.negative_flips
    if measured.accuracy is not None:
        metric["accuracy"] = measured.accuracy
    return metric


class PassReporter:
    """Reports each evaluation pass's agreement as one NNI intermediate result.

    A pass is the evaluation batches seen before the next training step (or the exit).
    Registered as a plugin; it never lets an error reach the training loop.
    """

    def __init__(self) -> None:
        self._meter: Any = None
        self._broken = False

    @hookimpl
    def labelkeep_evaluation_batch(
        self, student_logits: Any, reference_logits: Any, targets: Any
    ) -> None:
        if self._broken:
            return
        try:
            if self._meter is None:
                from labelkeep_plugins.metrics import AgreementMeter

                self._meter = AgreementMeter(topk=(1,))
            self._meter.update(reference_logits, student_logits, targets)
        except Exception as exc:
            self._give_up(exc)

    @hookimpl
    def labelkeep_training_step(
        self, student_logits: Any, reference_logits: Any, targets: Any, terms: Any
    ) -> None:
        if self._meter is not None:
            self.flush()

    def flush(self) -> None:
        """Send the pass seen so far, if any."""
        meter, self._meter = self._meter, None
        if self._broken or meter is None or not meter.samples:
            return
        try:
            import nni

            report = {"agreement": meter.compute().to_dict()}
            nni.report_intermediate_result(final_metric(measurement_from_report(report, source="")))
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        self._broken = True
        _warn(f"intermediate results to NNI stopped ({type(exc).__name__}: {exc})")


def report_final(session: Any, reporter: PassReporter) -> None:
    """At exit: the final result to NNI, unless the script reported its own."""
    try:
        report: RunReport = session.report()  # drains pending evaluation batches into the reporter
        reporter.flush()
        if _Trial.script_reported_final:
            _warn(
                "the script reported its own final result to NNI, so labelkeep did not; "
                "its agreement figures are in the run report"
            )
            return
        if session.crashed:
            _warn(f"the script failed ({session.crashed}); no final result sent to NNI")
            return
        measured = measurement_from_report(
            _trial_report(report, session.config.report), source="this NNI trial"
        )
        send = _Trial.report_final
        if send is None:
            import nni

            send = nni.report_final_result
        send(final_metric(measured))
    except Exception as exc:
        _warn(f"no final result sent to NNI ({type(exc).__name__}: {exc})")
    finally:
        end_trial()


def _trial_report(own: RunReport, base: str | None) -> Mapping[str, Any]:
    """This process's report, or rank 0's when the ranks did the evaluating (torchrun).

    Rank files are named as :func:`labelkeep_plugins.zero_code.report_files.report_path` names them.
    """
    if own.get("agreement") is not None or not base:
        return own
    path = Path(base)
    rank0 = path.with_name(f"{path.stem}.rank0{path.suffix or '.json'}")
    if not rank0.is_file():
        return own
    loaded: dict[str, Any] = json.loads(rank0.read_text(encoding="utf-8"))
    return loaded


def _with_trial_report(config: Config) -> Config:
    """Without a configured report, write it into NNI's trial output folder (children too)."""
    if config.report:
        return config
    folder = os.environ.get("NNI_OUTPUT_DIR") or os.environ.get("NNI_SYS_DIR")
    if not folder:
        return config
    path = str(Path(folder) / REPORT_NAME)
    from labelkeep_plugins.env import REPORT_ENV

    os.environ.setdefault(REPORT_ENV, path)
    return replace(config, report=os.environ[REPORT_ENV])


def _trial_parameters() -> dict[str, Any]:
    """The trial's parameters: inherited from the trial's first process, else from NNI."""
    inherited = os.environ.get(PARAMETERS_ENV)
    if inherited is not None:
        parameters: dict[str, Any] = json.loads(inherited)
        return parameters
    import nni

    received = nni.get_next_parameter() or {}
    _Trial.owner = True
    os.environ[PARAMETERS_ENV] = json.dumps(received)
    _share_with_script(nni, received)
    return dict(received)


def _share_with_script(nni: Any, parameters: dict[str, Any]) -> None:
    """Let the script's own ``get_next_parameter()`` see the same parameters; note its final."""
    original_final = nni.report_final_result
    _Trial.report_final = original_final

    def get_next_parameter() -> dict[str, Any]:
        return copy.deepcopy(parameters)

    def report_final_result(metric: Any) -> None:
        _Trial.script_reported_final = True
        original_final(metric)

    patches = PatchSet("NNI trial")
    replacements = {
        "get_next_parameter": get_next_parameter,
        "get_next_parameters": get_next_parameter,  # the older name, where NNI still has it
        "report_final_result": report_final_result,
    }
    for module in (nni, nni.trial):
        for name, replacement in replacements.items():
            if hasattr(module, name):
                patches.patch(module, name, replacement)
    _Trial.patches = patches


def end_trial() -> None:
    """Give NNI its own functions back: after the final result, or when a test is done.

    The wrappers stay for the process's life otherwise, since the script may still ask
    for the parameters that labelkeep's one ``get_next_parameter()`` call received.
    """
    patches, _Trial.patches = _Trial.patches, None
    if patches is not None:
        patches.undo()


def _warn(message: str) -> None:
    logger.warning(f"NNI trial: {message}")
