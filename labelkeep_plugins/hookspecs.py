"""The hooks labelkeep calls; plugins implement them with `@hookimpl`.

Registries (loss terms, tuners, adapters) follow one pattern: the hook gets a
``register`` callback and calls it once per thing it provides, so one plugin
can provide several and the host knows which plugin provided what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import torch
    from torch import nn

    from labelkeep_plugins.config import Config
    from labelkeep_plugins.zero_code.report_schema import ActiveRunReport
    from labelkeep_plugins.zero_code.session import Session

PROJECT_NAME = "labelkeep"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def labelkeep_register_terms(register: Callable[..., None]) -> None:
    """Register loss terms.

    Call ``register(term)`` with a :class:`labelkeep_plugins.loss.terms.LossTerm` for
    each term the plugin provides. A term's name is the key users give weights
    under; two plugins registering one name is an error that names both.

    :param register: the callback that records one term.
    :return: nothing; every implementation is called.
    """


@hookspec
def labelkeep_register_tuners(register: Callable[..., None]) -> None:
    """Register weight tuners.

    Call ``register(name, factory)`` where ``factory(config)`` returns a
    :class:`labelkeep_plugins.tuners.base.Tuner`: ``loss_config()``, ``state_dict()``,
    ``load_state_dict()``, and optionally ``bind(apply)`` to switch the live loss
    during the run. The session hands the tuner object to the handles it makes, so a
    tuner with a ``labelkeep_training_step`` or ``labelkeep_evaluation_batch`` method
    (same arguments as those hooks) hears what the injector measures on the session's
    students, and on no other model.

    :param register: the callback that records one tuner.
    :return: nothing; every implementation is called.
    """


@hookspec
def labelkeep_register_adapters(register: Callable[..., None]) -> None:
    """Register framework adapters.

    Call ``register(adapter)`` with an object that has ``name``, ``framework``
    (the distribution it patches), ``supported`` (a version specifier),
    ``instrument(context)`` and ``uninstrument()``. Registering must not import
    the framework: the host checks the installed version first.

    :param register: the callback that records one adapter.
    :return: nothing; every implementation is called.
    """


@hookspec
def labelkeep_auto_config(config: Config) -> Config | None:
    """Adjust the configuration that auto mode (``labelkeep-run``) is about to start with.

    Called in each process auto mode activates in, after the config file and the
    environment were read and before anything is instrumented: the NNI-trial plugin lays
    the trial's weights over the loss here. Implementations are chained in call order,
    each receiving the previous one's result.

    :param config: the configuration so far.
    :return: a new :class:`labelkeep_plugins.config.Config`, or None to leave it as it is.
        An exception means labelkeep cannot start: auto mode then runs the command
        without it (and says why), strict mode refuses to start.
    """


@hookspec
def labelkeep_session_started(session: Session) -> None:
    """Learn that auto mode instrumented this process; called once, before the script runs.

    Work registered with :mod:`atexit` here runs before the run report is handed to
    :func:`labelkeep_run_finished` (atexit runs last-registered first), so a plugin can
    still read the session's figures, e.g. to send them to an experiment manager.

    :param session: the process's :class:`labelkeep_plugins.zero_code.session.Session`.
    :return: nothing; every implementation is called. An exception costs one warning.
    """


@hookspec(historic=True)
def labelkeep_configure(config: Config) -> None:
    """Receive the run's validated configuration.

    Historic: a plugin registered after configuration still gets the call.

    :param config: the validated :class:`labelkeep_plugins.config.Config`.
    :return: nothing; every implementation is called.
    """


@hookspec
def labelkeep_reference_captured(student: nn.Module, reference: nn.Module, where: str) -> None:
    """Learn that a frozen reference was taken for ``student``.

    :param student: the model that will be compressed and trained.
    :param reference: its frozen snapshot (never modify it).
    :param where: a short description of the snapshot point, e.g. ``"torch_pruning.BasePruner"``.
    :return: nothing; every implementation is called.
    """


@hookspec
def labelkeep_training_step(
    student_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    targets: torch.Tensor | None,
    terms: dict[str, torch.Tensor],
) -> None:
    """See one training forward that received the label-preserving loss.

    Called once per student forward whose loss was modified, after the extra
    terms were computed. Online tuners and meters use it; it must not modify the
    tensors (they are detached).

    :param student_logits: detached student logits, (batch, classes).
    :param reference_logits: detached reference logits on the same inputs.
    :param targets: ground-truth class indices (N,) when the loss saw them, else None
        (probability targets give their argmax). An ``ignore_index`` is passed on as it
        is, so that no step waits on the device: mask it with
        :func:`labelkeep_plugins.loss.labels.valid_labels`.
    :param terms: each term's unweighted batch mean, a detached 0-dim tensor (no device sync);
        on the loss-value path also ``ce``: the user's own loss as a batch mean.
    :return: nothing; every implementation is called.
    """


@hookspec
def labelkeep_student_changed(student: nn.Module, where: str) -> None:
    """Learn that an adapter changed the student's function between training steps.

    A pruning round during recovery (NNI's scheduled pruners update their masks every few
    steps; torch-pruning's iterative ``step()``) leaves a student that fits its labels
    worse than the one the tuners measured. Tuners that weigh the teacher by what they
    measured start over from here.

    :param student: the model whose function changed (its root module).
    :param where: what changed it, e.g. ``"nni: TaylorPruner.update_masks"``.
    :return: nothing; every implementation is called.
    """


@hookspec
def labelkeep_evaluation_batch(
    student_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    targets: torch.Tensor | None,
) -> None:
    """See one evaluation (eval-mode or no-grad) batch of the student beside the reference.

    :param student_logits: detached student logits, (batch, classes).
    :param reference_logits: detached reference logits on the same inputs.
    :param targets: labels when the script computed a loss on this batch, else None.
    :return: nothing; every implementation is called.
    """


@hookspec
def labelkeep_run_finished(report: ActiveRunReport, path: Path | None) -> None:
    """Receive the final run report of one process (reporters write or send it).

    Called at exit in each process ``labelkeep run`` instrumented that has something
    to report (the command's own process, each DDP rank, any process that took a
    reference). The built-in reporter writes it as JSON to ``path``. A process labelkeep
    could not start in writes its short ``active: false`` report itself, at once: a
    plugin may be what failed.

    :param report: the JSON-serialisable report of the run, typed in
        :mod:`labelkeep_plugins.zero_code.report_schema` (the README lists its keys).
    :param path: where the user asked for the report (per rank under DDP), or None.
    :return: nothing; every implementation is called.
    """
