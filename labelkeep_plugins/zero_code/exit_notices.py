"""What a run says at its end when labelkeep did nothing, or nothing useful, in it.

Each is one line on stderr at exit (:mod:`.report`) and an entry in the report's
``warnings``: no compression seen; the script's own ``attach()`` (its figures are on its
handles); a reference taken but no training step with the loss (a copy was trained, or
the fine-tuning ran in eval mode); a reference that scores near chance (untrained).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labelkeep_plugins.injector.attach import InjectionHandle
    from labelkeep_plugins.metrics import AgreementMeter
    from labelkeep_plugins.zero_code.session import ReferenceRecord


def exit_notices(
    records: Sequence[ReferenceRecord],
    handles: Sequence[InjectionHandle],
    own_attaches_made: int,
    trained_steps: int,
) -> list[str]:
    """The notices for a session's references, handles, the script's attach() calls, steps."""
    if own_attaches_made:
        return [own_attaches(own_attaches_made)] if not (records or handles) else []
    if not (records or handles):
        return [NO_COMPRESSION_SEEN]
    in_eval_mode = [eval_mode_training(h) for h in handles if h.stats.eval_mode_backwards]
    if not trained_steps:  # training in eval mode is the specific cause, when it was seen
        return in_eval_mode or [never_trained(records)]
    untrained = [untrained_reference(handle) for handle in handles if _near_chance(handle.meter)]
    return [*in_eval_mode, *untrained]


def standalone_attaches() -> int:
    """attach()'s count of its handles; 0 before the injector is imported (it imports
    torch._dynamo, which a session that never attaches should not pay for)."""
    module = sys.modules.get("labelkeep_plugins.injector.attach")
    return 0 if module is None else int(module.standalone_attaches())


def own_attaches(count: int) -> str:
    """The script attached models itself: their figures are on its handles, not here."""
    return (
        f"{OWN_ATTACHES_START} {count} model(s) itself (labelkeep_plugins.attach() or "
        "LabelPreservingLoss), and no adapter took a reference: their loss and figures are "
        "on the script's own handles (handle.meter, handle.pass_history), not in this report"
    )


def never_trained(records: Sequence[ReferenceRecord]) -> str:
    """A reference was taken, but no training step got the loss: say it, with the usual causes."""
    models = ", ".join(sorted({f"{r.model_type} ({r.where})" for r in records})) or "a model"
    return (
        f"{NEVER_TRAINED_START}, though a reference of {models} was taken: the fine-tuning "
        "trained another object (a copy: copy.deepcopy, torch.save then torch.load), ran in "
        "eval mode or under no_grad, or never ran"
    )


def eval_mode_training(handle: InjectionHandle) -> str:
    """Backwards ran through eval-mode forwards: read as evaluation, so trained without the loss."""
    count = handle.stats.eval_mode_backwards
    return (
        f"{EVAL_MODE_START} {count} backward pass(es) ran through "
        f"{type(handle.student).__name__} in eval mode, which labelkeep reads as evaluation "
        "(those forwards count in the agreement figures). If that was training, call "
        "model.train() before it (an evaluation's model.eval() left on?), or set "
        "train_mode_only: false to add the loss in eval mode too"
    )


def _near_chance(meter: AgreementMeter) -> bool:
    """The reference's accuracy on labelled evaluation data is near chance: it was untrained."""
    classes, counts = meter.num_classes, meter.counts
    if not classes or classes < 2 or counts["labelled"] < MIN_LABELLED_TO_JUDGE:
        return False
    return counts["reference_correct"] / counts["labelled"] < CHANCE_FACTOR / classes


def untrained_reference(handle: InjectionHandle) -> str:
    """The reference of ``handle`` looks untrained: its agreement figures mean little."""
    counts, classes = handle.meter.counts, handle.meter.num_classes
    accuracy = counts["reference_correct"] / counts["labelled"]
    return (
        f"{UNTRAINED_START} {type(handle.student).__name__} scored {accuracy:.1%} on the "
        f"{counts['labelled']} labelled evaluation samples, near chance for {classes} classes: "
        "it looks untrained (a reference is taken when compression starts; in quantization-aware "
        "training from scratch that is a random network). The agreement figures compare with "
        "it; load trained weights before compressing to recover towards a trained model"
    )


MIN_LABELLED_TO_JUDGE = 100  # fewer labelled samples cannot tell a weak model from chance
CHANCE_FACTOR = 1.5  # below 1.5x chance accuracy the reference has learnt (nearly) nothing
UNTRAINED_START = "labelkeep's reference of"
NEVER_TRAINED_START = "no training step got the label-preserving loss"
OWN_ATTACHES_START = "the script attached"
EVAL_MODE_START = "training in eval mode got no label-preserving loss:"

NO_COMPRESSION_SEEN = (
    "no compression was seen: no adapter took a reference and no model was attached, so "
    "labelkeep added nothing. It looks for NNI compressors, torch-pruning pruners and Brevitas' "
    "quantize calls (labelkeep plugins lists the adapters); for a loop of your own, use "
    "labelkeep_plugins.LabelPreservingLoss or labelkeep_plugins.attach()"
)
