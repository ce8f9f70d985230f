"""Tests for labelkeep_plugins.injector: the loss the user's own loop ends up training on.

Every gradient test runs three copies of one student through the same user step:
injected (``attach`` on, the user's code unchanged), explicit (the user's loss with each
``cross_entropy(logits_i, y_i, reduction=r)`` replaced by ``w_ce * CE_i + reduce_r(extra_i)``,
or, for a custom loss, ``w_ce * loss + mean(extra(logits, ref, None))``, written out by hand
with a :class:`LossComposer`) and plain (no injector). Injected must equal explicit, and
differ from plain, so a no-op injector fails.

DDP, torch.compile and AMP live in test_injector_parallel.py.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN, perturbed
from gradients import Grads, assert_grads_equal, max_difference
from torch import nn
from torch.amp.grad_scaler import GradScaler

from labelkeep_plugins import (
    InjectionHandle,
    LabelkeepError,
    LogitsError,
    NonFiniteError,
    ShapeMismatchError,
    attach,
    checksum,
    get_plugin_manager,
    hookimpl,
    load_plugins,
    snapshot_reference,
)
from labelkeep_plugins.config import FocalConfig, LossConfig
from labelkeep_plugins.loss.composer import LossComposer

CLASSES = 5

# name -> (keyword pieces given to attach(), a function building the same loss as a
# LossConfig; built inside the tests, since validating weights loads the plugins)
CONFIGS: dict[str, tuple[dict[str, Any], Callable[[], LossConfig]]] = {
    "default": (
        {},
        lambda: LossConfig(weights={"ce": 1.0, "kd": 1.0}, temperature=4.0, focal=None),
    ),
    "weighted": (
        {
            "weights": {"ce": 0.5, "kd": 2.0, "hard": 0.3, "logit_mse": 0.1},
            "temperature": 3.0,
            "focal": {"base": 0.5, "scale": 2.0},
        },
        lambda: LossConfig(
            weights={"ce": 0.5, "kd": 2.0, "hard": 0.3, "logit_mse": 0.1},
            temperature=3.0,
            focal=FocalConfig(base=0.5, scale=2.0),
        ),
    ),
    "no_focal": (
        {"weights": {"ce": 1.5, "kd": 0.7, "hard": 0.2}, "temperature": 4.0, "focal": False},
        lambda: LossConfig(
            weights={"ce": 1.5, "kd": 0.7, "hard": 0.2}, temperature=4.0, focal=None
        ),
    ),
}


def loss_setup(name: str) -> tuple[dict[str, Any], LossConfig]:
    """``attach`` keyword pieces and the equivalent LossConfig for one named loss."""
    attach_kwargs, build = CONFIGS[name]
    return attach_kwargs, build()


Step = Callable[[nn.Module], None]


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"mean": values.mean, "sum": values.sum, "none": lambda: values}[reduction]()


class Explicit:
    """The explicit combined loss, built by hand from a LossComposer (no injector attached)."""

    def __init__(
        self,
        reference: nn.Module,
        config: LossConfig,
        select: Callable[[Any], torch.Tensor] = lambda out: out,
    ) -> None:
        self.reference = reference
        self.composer = LossComposer(config)
        self.w_ce = config.weights.get("ce", 0.0)
        self.select = select

    def extra(
        self, logits: torch.Tensor, x: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        with torch.no_grad():
            reference_logits = self.select(self.reference(x))
        return self.composer.extra_per_sample(logits, reference_logits, targets)[0]

    def ce(
        self,
        logits: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        reduction: str = "mean",
        base: Callable[..., torch.Tensor] = F.cross_entropy,
    ) -> torch.Tensor:
        """What one ``base(logits, y, reduction=...)`` call stands for."""
        user = base(logits, y, reduction=reduction)
        return self.w_ce * user + _reduce(self.extra(logits, x, y), reduction)

    def custom(
        self, user_loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """A loss the logits reach without cross_entropy/nll_loss: the gradient path."""
        return self.w_ce * user_loss + self.extra(logits, x, None).mean()


def grads_of(model: nn.Module) -> Grads:
    found = {
        name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None
    }
    assert set(found) == {name for name, _ in model.named_parameters()}, "a parameter got no grad"
    return found


def run(student: nn.Module, step: Step) -> Grads:
    """Gradients of ``step`` on a fresh copy of ``student``, nothing attached."""
    model = copy.deepcopy(student)
    step(model)
    return grads_of(model)


def run_injected(
    student: nn.Module, reference: nn.Module, step: Step, **attach_kwargs: Any
) -> tuple[Grads, dict[str, int]]:
    """Gradients of the unchanged user ``step`` with the injector attached to a fresh copy."""
    model = copy.deepcopy(student)
    with attach(model, reference, **attach_kwargs) as handle:
        step(model)
    return grads_of(model), handle.stats.as_dict()


def assert_grads_differ(got: Grads, plain: Grads) -> None:
    """The extra terms moved the gradients well beyond the comparison tolerance."""
    assert max_difference(got, plain) > 1e-3


def with_log_softmax(model: nn.Module) -> nn.Module:
    """The model ending in LogSoftmax: its outputs are log-probabilities, for NLLLoss."""
    return nn.Sequential(copy.deepcopy(model), nn.LogSoftmax(dim=1))


def one_hot(y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, CLASSES).float()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster, and immune to busy cores (2-core CI)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the user's losses --------------------------------------------------------------------

# finish -> (the reduction given to the criterion, what the user does with its value)
FINISHES: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "mean": ("mean", lambda loss: loss),
    "sum": ("sum", lambda loss: loss),
    "none_mean": ("none", lambda loss: loss.mean()),
    "none_sum": ("none", lambda loss: loss.sum()),
}


def user_criterion(
    kind: str, reduction: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if kind == "module":
        return nn.CrossEntropyLoss(reduction=reduction)
    if kind == "functional":
        return lambda logits, y: F.cross_entropy(logits, y, reduction=reduction)
    if kind == "positional":  # reduction as the 7th positional argument
        return lambda logits, y: F.cross_entropy(logits, y, None, None, -100, None, reduction)
    if kind == "nll_module":
        return nn.NLLLoss(reduction=reduction)
    raise AssertionError(kind)


CUSTOM_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse_softmax": lambda logits, y: F.mse_loss(logits.softmax(dim=1), one_hot(y)),
    "hand_nll": lambda logits, y: -logits.log_softmax(dim=1).gather(1, y[:, None]).mean(),
    # nll_loss on a log_softmax of other than the logits themselves: the gradient path
    "nll_of_scaled_log_softmax": lambda logits, y: F.nll_loss((logits / 2).log_softmax(dim=1), y),
}


# --- 1. one forward, cross_entropy / nll_loss ---------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("finish", list(FINISHES))
@pytest.mark.parametrize("kind", ["module", "functional", "positional", "nll_module"])
def test_single_forward_matches_explicit_loss(
    student, reference_model, batch, kind, finish, config
):
    x, y = batch
    attach_kwargs, loss_config = loss_setup(config)
    reduction, then = FINISHES[finish]
    base = F.cross_entropy
    if kind == "nll_module":
        student, reference_model, base = (
            with_log_softmax(student),
            with_log_softmax(reference_model),
            F.nll_loss,
        )
    reference = snapshot_reference(reference_model)
    criterion = user_criterion(kind, reduction)
    explicit = Explicit(reference, loss_config)

    def user(model: nn.Module) -> None:
        then(criterion(model(x), y)).backward()

    def combined(model: nn.Module) -> None:
        logits = model(x)
        then(explicit.ce(logits, x, y, reduction, base)).backward()

    got, stats = run_injected(student, reference, user, **attach_kwargs)
    assert_grads_equal(got, run(student, combined))
    assert_grads_differ(got, run(student, user))
    assert stats["training_forwards"] == 1
    assert stats["via_loss_value"] == 1
    assert stats["via_gradient"] == 0


def nll_of_log_softmax(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean"):
    """Cross-entropy written out, as many scripts do (and NNI's and Brevitas' examples)."""
    return F.nll_loss(F.log_softmax(logits, dim=1), y, reduction=reduction)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("finish", list(FINISHES))
def test_nll_loss_of_log_softmax_takes_the_loss_value_path(
    student, reference_model, batch, finish, config
):
    """The terms ride on the user's nll_loss, computed on the logits the log_softmax read."""
    x, y = batch
    attach_kwargs, loss_config = loss_setup(config)
    reduction, then = FINISHES[finish]
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_config)

    def user(model: nn.Module) -> None:  # the logits tensor is freed before nll_loss runs
        then(F.nll_loss(F.log_softmax(model(x), dim=1), y, reduction=reduction)).backward()

    def combined(model: nn.Module) -> None:
        then(explicit.ce(model(x), x, y, reduction, nll_of_log_softmax)).backward()

    got, stats = run_injected(student, reference, user, **attach_kwargs)
    assert_grads_equal(got, run(student, combined))
    assert_grads_differ(got, run(student, user))
    assert (stats["via_loss_value"], stats["via_gradient"]) == (1, 0)


def test_an_nll_of_log_softmax_evaluation_gives_its_labels(student, reference_model, batch):
    """Under no_grad there is no graph: the log_softmax is matched by its values."""
    x, y = batch
    handle = attach(student, reference_model)
    student.eval()
    with torch.no_grad():
        nll_of_log_softmax(student(x), y)
        nll_of_log_softmax(student(x) / 2, y)  # not the logits' log_softmax: no labels from it
    counts = handle.meter.counts
    assert counts["samples"] == 2 * len(y) and counts["labelled"] == len(y)
    handle.detach()


def test_attach_with_a_loss_config_equals_keyword_pieces(student, reference_model, batch):
    x, y = batch
    reference = snapshot_reference(reference_model)
    attach_kwargs, loss_config = loss_setup("weighted")

    def user(model: nn.Module) -> None:
        F.cross_entropy(model(x), y).backward()

    by_pieces, _ = run_injected(student, reference, user, **attach_kwargs)
    by_config, _ = run_injected(student, reference, user, loss=loss_config)
    assert_grads_equal(by_pieces, by_config, atol=0, rtol=0)


def test_legacy_size_average_is_read_as_sum(student, reference_model, batch):
    x, y = batch
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_setup("default")[1])

    def user(model: nn.Module) -> None:
        F.cross_entropy(model(x), y, size_average=False).backward()

    def combined(model: nn.Module) -> None:
        explicit.ce(model(x), x, y, "sum").backward()

    with pytest.warns(UserWarning, match="size_average"):
        got, _ = run_injected(student, reference, user)
    assert_grads_equal(got, run(student, combined))


@pytest.mark.parametrize("targets", ["label_smoothing", "probabilities"])
def test_soft_targets_and_label_smoothing(student, reference_model, batch, targets):
    x, y = batch
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_setup("weighted")[1])
    if targets == "probabilities":
        target = (0.8 * one_hot(y) + 0.2 / CLASSES).softmax(dim=1)
        options: dict[str, Any] = {}
    else:
        target, options = y, {"label_smoothing": 0.1}

    def user(model: nn.Module) -> None:
        F.cross_entropy(model(x), target, **options).backward()

    def combined(model: nn.Module) -> None:
        logits = model(x)
        loss = explicit.w_ce * F.cross_entropy(logits, target, **options)
        (loss + explicit.extra(logits, x, target).mean()).backward()

    got, stats = run_injected(student, reference, user, **loss_setup("weighted")[0])
    assert_grads_equal(got, run(student, combined))
    assert_grads_differ(got, run(student, user))
    assert stats["via_loss_value"] == 1


def test_inputs_given_as_keyword_arguments(student, reference_model, batch):
    x, y = batch
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_setup("default")[1])

    def user(model: nn.Module) -> None:
        F.cross_entropy(model(x=x), y).backward()

    def combined(model: nn.Module) -> None:
        explicit.ce(model(x=x), x, y).backward()

    got, _ = run_injected(student, reference, user)
    assert_grads_equal(got, run(student, combined))


# --- 2. several forwards per step, loss averaging -----------------------------------------


@pytest.mark.parametrize("config", ["default", "weighted"])
@pytest.mark.parametrize("divisor", [1, 2])
def test_two_forwards_per_step(student, reference_model, batch, divisor, config):
    x, y = batch
    (x1, x2), (y1, y2) = x.split(6), y.split(6)
    attach_kwargs, loss_config = loss_setup(config)
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_config)
    module_ce = nn.CrossEntropyLoss()

    def user(model: nn.Module) -> None:
        ce1 = module_ce(model(x1), y1)
        ce2 = F.cross_entropy(model(x2), y2)
        ((ce1 + ce2) / divisor).backward()

    def combined(model: nn.Module) -> None:
        ce1 = explicit.ce(model(x1), x1, y1)
        ce2 = explicit.ce(model(x2), x2, y2)
        ((ce1 + ce2) / divisor).backward()

    got, stats = run_injected(student, reference, user, **attach_kwargs)
    assert_grads_equal(got, run(student, combined))
    assert_grads_differ(got, run(student, user))
    assert (stats["training_forwards"], stats["via_loss_value"]) == (2, 2)


# --- 3. gradient accumulation -------------------------------------------------------------


@pytest.mark.parametrize("config", ["default", "weighted"])
def test_gradient_accumulation(student, reference_model, batch, config):
    x, y = batch
    micro = list(zip(x.split(6), y.split(6), strict=True))
    attach_kwargs, loss_config = loss_setup(config)
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_config)

    def user(model: nn.Module) -> None:
        for xb, yb in micro:
            (F.cross_entropy(model(xb), yb) / 2).backward()

    def combined(model: nn.Module) -> None:
        for xb, yb in micro:
            (explicit.ce(model(xb), xb, yb) / 2).backward()

    got, stats = run_injected(student, reference, user, **attach_kwargs)
    assert_grads_equal(got, run(student, combined))
    assert_grads_differ(got, run(student, user))
    assert stats["via_loss_value"] == 2


# --- 4. custom losses: the gradient path --------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("loss_name", list(CUSTOM_LOSSES))
def test_custom_loss_takes_the_gradient_path(student, reference_model, batch, loss_name, config):
    x, y = batch
    attach_kwargs, loss_config = loss_setup(config)
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_config)
    custom = CUSTOM_LOSSES[loss_name]

    def user(model: nn.Module) -> None:
        custom(model(x), y).backward()

    def combined(model: nn.Module) -> None:
        logits = model(x)
        explicit.custom(custom(logits, y), logits, x).backward()

    got, stats = run_injected(student, reference, user, **attach_kwargs)
    assert_grads_equal(got, run(student, combined))
    assert_grads_differ(got, run(student, user))
    assert (stats["via_loss_value"], stats["via_gradient"]) == (0, 1)


def test_gradient_path_focal_weights_use_base_only(student, reference_model, batch):
    """Labels are unknown on the gradient path: focal weights are ``base`` for every sample."""
    x, y = batch
    attach_kwargs, loss_config = loss_setup("weighted")
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_config)
    custom = CUSTOM_LOSSES["mse_softmax"]

    def with_labels(model: nn.Module) -> None:  # what the gradient path must NOT compute
        logits = model(x)
        (explicit.w_ce * custom(logits, y) + explicit.extra(logits, x, y).mean()).backward()

    got, _ = run_injected(student, reference, lambda m: custom(m(x), y).backward(), **attach_kwargs)
    assert max_difference(got, run(student, with_labels)) > 1e-3


# --- 8. evaluation and no-grad passes -----------------------------------------------------


def test_eval_mode_pass_adds_nothing(student, reference_model, batch):
    x, y = batch
    reference = snapshot_reference(reference_model)

    def user(model: nn.Module) -> None:
        model.eval()
        F.cross_entropy(model(x), y).backward()  # grad enabled, but the model is in eval mode

    got, stats = run_injected(student, reference, user)
    assert_grads_equal(got, run(student, user), atol=0, rtol=0)
    assert stats["forwards"] == 1
    assert stats["training_forwards"] == stats["via_loss_value"] == stats["via_gradient"] == 0


def test_eval_mode_pass_counts_when_train_mode_only_is_off(student, reference_model, batch):
    x, y = batch
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_setup("default")[1])

    def user(model: nn.Module) -> None:
        model.eval()
        F.cross_entropy(model(x), y).backward()

    def combined(model: nn.Module) -> None:
        model.eval()
        explicit.ce(model(x), x, y).backward()

    got, stats = run_injected(student, reference, user, train_mode_only=False)
    assert_grads_equal(got, run(student, combined))
    assert stats["training_forwards"] == 1


def test_no_grad_pass_adds_nothing_and_later_training_is_unaffected(
    student, reference_model, batch
):
    x, y = batch
    reference = snapshot_reference(reference_model)
    explicit = Explicit(reference, loss_setup("default")[1])
    model = copy.deepcopy(student)
    with attach(model, reference) as handle:
        with torch.no_grad():
            F.cross_entropy(model(x), y)  # a validation loss in train mode
        assert handle.stats.training_forwards == 0
        assert handle.stats.forwards == 1
        assert all(p.grad is None for p in model.parameters())
        F.cross_entropy(model(x), y).backward()
        assert handle.stats.training_forwards == 1

    def combined(m: nn.Module) -> None:
        with torch.no_grad():
            m(x)  # the same BN running-statistics update
        explicit.ce(m(x), x, y).backward()

    assert_grads_equal(grads_of(model), run(student, combined))


def test_evaluation_loop_feeds_the_meter(reference_model, batch):
    x, y = batch
    student = perturbed(reference_model, scale=0.5)
    reference = snapshot_reference(reference_model)
    x2 = torch.randn(8, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference_labels = reference(x).argmax(1)
        student.eval()
        student_labels = student(x).argmax(1)
        mismatches2 = int((reference(x2).argmax(1) != student(x2).argmax(1)).sum())
    negative_flips = int(((reference_labels == y) & (student_labels != y)).sum())
    assert negative_flips > 0  # the data must be able to show them

    with attach(student, reference) as handle:
        student.eval()
        with torch.no_grad():
            F.cross_entropy(student(x), y)  # labelled batch: flips are counted
            student(x2)  # unlabelled batch: only agreement
        report = handle.meter.compute()
        assert handle.stats.training_forwards == 0
        assert handle.stats.evaluation_batches == 2
    assert report.samples == 12 + 8
    assert report.labelled == 12
    assert report.negative_flips == negative_flips
    assert report.mismatches == int((reference_labels != student_labels).sum()) + mismatches2


def test_eval_with_grad_enabled_feeds_the_meter_too(reference_model, batch):
    x, y = batch
    student = perturbed(reference_model, scale=0.5).eval()
    with attach(student, reference_model) as handle:
        nn.CrossEntropyLoss()(student(x), y)  # eval mode, grad on
        report = handle.meter.compute()
    assert (report.samples, report.labelled) == (12, 12)
    assert handle.stats.training_forwards == 0


# --- 9. output formats --------------------------------------------------------------------


@dataclass
class HFOutput:
    """A Hugging Face-style output object with a ``.logits`` attribute (not a mapping)."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module, form: str) -> None:
        super().__init__()
        self.inner, self.form = inner, form

    def forward(self, x: torch.Tensor) -> Any:
        logits = self.inner(x)
        features = x * 2
        if self.form == "tuple":
            return logits, features
        if self.form == "dict":
            return {"features": features, "logits": logits}
        return HFOutput(logits=logits, hidden=features)


SELECT: dict[str, Callable[[Any], torch.Tensor]] = {
    "tuple": lambda out: out[0],
    "dict": lambda out: out["logits"],
    "hf": lambda out: out.logits,
}


@pytest.mark.parametrize(
    ("form", "selector"),
    [("tuple", 0), ("dict", None), ("dict", "logits"), ("hf", None), ("hf", "logits")],
)
def test_output_formats(student, reference_model, batch, form, selector):
    x, y = batch
    student, reference = Wrapped(student, form), snapshot_reference(Wrapped(reference_model, form))
    select = SELECT[form]
    explicit = Explicit(reference, loss_setup("default")[1], select)

    def user(model: nn.Module) -> None:
        F.cross_entropy(select(model(x)), y).backward()

    def combined(model: nn.Module) -> None:
        explicit.ce(select(model(x)), x, y).backward()

    got, stats = run_injected(student, reference, user, logits=selector)
    assert_grads_equal(got, run(student, combined))
    assert_grads_differ(got, run(student, user))
    assert stats["via_loss_value"] == 1


def test_tuple_output_without_selector_says_how_to_give_one(student, reference_model, batch):
    x, _ = batch
    model = Wrapped(student, "tuple")
    with (
        attach(model, Wrapped(reference_model, "tuple")),
        pytest.raises(LogitsError, match="logits:") as caught,
    ):
        model(x)
    assert "tuple" in str(caught.value)
    assert "logits=" in str(caught.value)


# --- 10. detach and the reference ---------------------------------------------------------


def _patched_attributes() -> tuple[Any, ...]:
    return (F.cross_entropy, F.nll_loss, vars(GradScaler)["scale"], vars(GradScaler)["update"])


@pytest.mark.parametrize("order", ["first_in_first_out", "last_in_first_out"])
def test_detach_leaves_nothing_behind(student, reference_model, batch, order):
    x, y = batch
    originals = _patched_attributes()
    other = perturbed(reference_model, seed=3)
    first = attach(student, reference_model)
    second = attach(other, reference_model)
    assert all(now is not was for now, was in zip(_patched_attributes(), originals, strict=True))
    assert len(student._forward_hooks) == 1 and len(other._forward_hooks) == 1
    handles = [first, second] if order == "first_in_first_out" else [second, first]
    handles[0].detach()
    assert F.cross_entropy is not originals[0]  # the other handle still needs the patch
    handles[1].detach()
    handles[1].detach()  # idempotent
    assert not first.attached and not second.attached
    assert all(now is was for now, was in zip(_patched_attributes(), originals, strict=True))
    assert not student._forward_hooks and not other._forward_hooks
    assert not student._forward_hooks_with_kwargs
    assert not student._forward_pre_hooks
    assert all(not m._forward_hooks for m in student.modules())

    def user(model: nn.Module) -> None:
        F.cross_entropy(model(x), y).backward()

    plain = run(perturbed(reference_model), user)  # the same weights as `student`
    assert_grads_equal(run(student, user), plain, atol=0, rtol=0)


def test_attaching_twice_to_one_student_is_refused(student, reference_model):
    handle = attach(student, reference_model)
    with pytest.raises(LabelkeepError, match="already has labelkeep attached"):
        attach(student, reference_model)
    handle.detach()
    attach(student, reference_model).detach()  # allowed again once detached


def test_copies_of_an_attached_student_carry_no_loss(student, reference_model, batch):
    x, y = batch
    handle = attach(student, reference_model)
    clone = copy.deepcopy(student)  # e.g. keeping the best checkpoint
    buffer = io.BytesIO()
    torch.save(student, buffer)  # whole-module save pickles the hooks too
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for model in (clone, loaded):
        F.cross_entropy(model(x), y).backward()
    assert handle.stats.forwards == 0
    handle.detach()


def test_a_saved_attached_model_loads_without_labelkeep(batch, tmp_path):
    """torch.save(model) of an attached student (torch-pruning's way to keep a pruned
    model) loads and runs where labelkeep cannot be imported, with the same outputs."""
    x, _ = batch
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))  # torch classes only
    handle = attach(student, snapshot_reference(student))
    path = tmp_path / "model.pt"
    torch.save(student, path)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(student.eval()(x), tmp_path / "expected.pt")
    handle.detach()
    code = (
        "import sys; sys.modules['labelkeep_plugins'] = None\n"  # any import of it fails
        "import torch\n"
        f"model = torch.load({str(path)!r}, weights_only=False).eval()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(model(x), expected)\n"
        "assert 'labelkeep_plugins.injector' not in sys.modules\n"
        "print('loaded')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "loaded", result.stderr


def test_a_trained_copy_says_once_that_it_gets_no_loss(
    student, reference_model, batch, monkeypatch, caplog
):
    """Inert is not silent: the first backward through a copy's output tells, once."""
    from labelkeep_plugins.injector.forward_hook import COPY_TRAINED, InertHook

    monkeypatch.setattr(InertHook, "told", False)
    x, y = batch
    handle = attach(student, reference_model)
    clone = copy.deepcopy(student)
    with caplog.at_level("WARNING", logger="labelkeep"):
        clone.eval()
        clone(x)  # a forward alone (a checkpoint evaluated) proves nothing
        with torch.no_grad():
            clone.train()(x)
        assert COPY_TRAINED not in caplog.text
        for _ in range(2):
            F.cross_entropy(clone(x), y).backward()
    assert caplog.text.count(COPY_TRAINED) == 1
    assert handle.stats.forwards == 0
    handle.detach()


def test_last_pass_meter_keeps_only_the_latest_evaluation_pass(student, reference_model, batch):
    x, y = batch
    handle = attach(student, reference_model)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    for _epoch in range(2):
        student.train()
        optimizer.zero_grad()
        F.cross_entropy(student(x), y).backward()
        optimizer.step()
        student.eval()
        with torch.no_grad():
            for _batch in range(3):
                F.cross_entropy(student(x), y)
    assert handle.meter.samples == 2 * 3 * len(y)
    assert handle.last_pass_meter.samples == 3 * len(y)
    handle.detach()


def test_on_error_contains_a_failing_forward(student, reference_model, batch):
    x, y = batch
    seen: list[Exception] = []
    wide = nn.Sequential(nn.Flatten(), nn.Linear(16, 7))  # 7 classes: shapes cannot match
    handle = InjectionHandle(
        wide,
        snapshot_reference(student),
        LossComposer(LossConfig()),
        on_error=lambda _handle, exc: seen.append(exc),
    )
    F.cross_entropy(wide(x), torch.randint(0, 7, (len(y),))).backward()
    assert len(seen) == 1 and isinstance(seen[0], ShapeMismatchError)
    handle.detach()


@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse_softmax"])
def test_backward_after_detach_adds_nothing(student, reference_model, batch, loss_name):
    x, y = batch
    custom = F.cross_entropy if loss_name == "cross_entropy" else CUSTOM_LOSSES["mse_softmax"]

    def user(model: nn.Module) -> None:
        custom(model(x), y).backward()

    model = copy.deepcopy(student)
    handle = attach(model, reference_model)
    logits = model(x)  # a training forward while attached: a gradient hook is pending
    handle.detach()
    custom(logits, y).backward()
    assert_grads_equal(grads_of(model), run(student, user), atol=0, rtol=0)
    assert handle.stats.training_forwards == 1
    assert handle.stats.via_gradient == handle.stats.via_loss_value == 0


def test_reference_stays_intact_and_outside_the_student(student, reference_model, batch):
    x, y = batch
    before = checksum(reference_model)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    handle = attach(student, reference_model)
    reference = handle.reference
    assert reference is not reference_model  # not a snapshot yet: attach took a frozen copy
    assert checksum(reference) == before
    student_before = checksum(student)
    for step in range(3):
        student.train()
        optimizer.zero_grad()
        logits = student(x)
        loss = F.cross_entropy(logits, y) if step % 2 == 0 else CUSTOM_LOSSES["hand_nll"](logits, y)
        loss.backward()
        optimizer.step()
    handle.detach()
    assert handle.stats.via_loss_value == 2 and handle.stats.via_gradient == 1
    assert checksum(student) != student_before  # training did happen
    assert checksum(reference) == before
    assert checksum(reference_model) == before
    assert reference.training is False
    assert all(not m.training for m in reference.modules())
    assert all(not p.requires_grad for p in reference.parameters())
    assert all(m is not reference for m in student.modules())
    reference_tensors = {id(t) for t in [*reference.parameters(), *reference.buffers()]}
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not reference_tensors & in_optimizer
    assert not reference_tensors & {id(p) for p in student.parameters()}


def test_a_snapshot_is_used_as_is(student, reference_model):
    reference = snapshot_reference(reference_model)
    with attach(student, reference) as handle:
        assert handle.reference is reference


# --- 11. errors ---------------------------------------------------------------------------


def test_class_count_mismatch_names_both_shapes(student, batch):
    x, y = batch
    torch.manual_seed(3)
    with attach(student, TinyCNN(classes=4)), pytest.raises(ShapeMismatchError) as caught:
        F.cross_entropy(student(x), y).backward()
    message = str(caught.value)
    assert "(12, 5)" in message
    assert "(12, 4)" in message


def test_non_finite_reference_raises(student, reference_model, batch):
    x, y = batch
    broken = copy.deepcopy(reference_model)
    with torch.no_grad():
        broken.fc.bias[0] = float("nan")
    with attach(student, broken), pytest.raises(NonFiniteError, match="NaN"):
        F.cross_entropy(student(x), y).backward()


# --- 12. muted ----------------------------------------------------------------------------


def test_muted_forwards_pass_untouched(student, reference_model, batch):
    x, y = batch

    def user(model: nn.Module) -> None:
        F.cross_entropy(model(x), y).backward()

    model = copy.deepcopy(student)
    with attach(model, reference_model) as handle:
        with handle.muted():
            user(model)
        assert handle.stats.forwards == 0
        assert_grads_equal(grads_of(model), run(student, user), atol=0, rtol=0)

        logits = model(x)  # captured before muting: the criterion call under mute is plain too
        model.zero_grad()
        with handle.muted():
            F.cross_entropy(logits, y).backward()
        assert handle.stats.via_loss_value == handle.stats.via_gradient == 0

        model.zero_grad()
        user(model)  # unmuted again
        assert handle.stats.via_loss_value == 1
    assert_grads_differ(grads_of(model), run(student, user))


# --- 13. the labelkeep_training_step hook ------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.training: list[dict[str, Any]] = []
        self.evaluation: list[dict[str, Any]] = []

    @hookimpl
    def labelkeep_training_step(self, student_logits, reference_logits, targets, terms):
        self.training.append(
            {
                "student": student_logits,
                "reference": reference_logits,
                "targets": targets,
                "terms": terms,
            }
        )

    @hookimpl
    def labelkeep_evaluation_batch(self, student_logits, reference_logits, targets):
        self.evaluation.append({"student": student_logits, "targets": targets})


def test_training_step_hook_sees_each_training_forward(student, reference_model, batch):
    x, y = batch
    load_plugins()
    recorder = Recorder()
    get_plugin_manager().register(recorder)
    weights = {"ce": 1.0, "kd": 1.0, "hard": 0.5}
    reference = snapshot_reference(reference_model)
    with attach(student, reference, weights=weights) as handle:
        logits1 = student(x)
        F.cross_entropy(logits1, y).backward()  # loss-value path
        logits2 = student(x[:6])
        CUSTOM_LOSSES["mse_softmax"](logits2, y[:6]).backward()  # gradient path
        assert len(recorder.training) == 2
        student.eval()
        with torch.no_grad():
            student(x)
        _ = handle.meter
    assert handle.stats.training_forwards == 2
    assert len(recorder.training) == 2
    assert len(recorder.evaluation) == 1
    first, second = recorder.training
    # the loss-value path also reports the user's own loss as "ce"; the gradient path cannot
    paths = ((first, logits1, x, {"ce", "kd", "hard"}), (second, logits2, x[:6], {"kd", "hard"}))
    for call, logits, xb, names in paths:
        assert not call["student"].requires_grad
        assert not call["reference"].requires_grad
        assert call["student"] is not logits
        torch.testing.assert_close(call["student"], logits.detach(), atol=0, rtol=0)
        torch.testing.assert_close(call["reference"], reference(xb), atol=0, rtol=0)
        assert set(call["terms"]) == names
        assert all(v.dim() == 0 and not v.requires_grad for v in call["terms"].values())
    assert torch.equal(first["targets"], y)
    assert second["targets"] is None
    get_plugin_manager().unregister(recorder)


def test_hook_registered_after_attach_is_called(student, reference_model, batch):
    x, y = batch
    with attach(student, reference_model):
        load_plugins()
        recorder = Recorder()
        get_plugin_manager().register(recorder)
        F.cross_entropy(student(x), y).backward()
    assert len(recorder.training) == 1


def test_two_criterion_calls_on_one_forward_count_once(student, reference_model, batch):
    """Mixup: each cross_entropy call gets its extra terms, but it is one training forward,
    so the stats and the training-step hook count it once."""
    x, y = batch
    y_mixed = y.roll(1)
    lam = 0.7
    load_plugins()
    recorder = Recorder()
    get_plugin_manager().register(recorder)
    reference = snapshot_reference(reference_model)
    attach_kwargs, loss_config = loss_setup("weighted")
    explicit = Explicit(reference, loss_config)

    def user(model: nn.Module) -> None:
        logits = model(x)
        (lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y_mixed)).backward()

    def combined(model: nn.Module) -> None:
        logits = model(x)
        (lam * explicit.ce(logits, x, y) + (1 - lam) * explicit.ce(logits, x, y_mixed)).backward()

    got, stats = run_injected(student, reference, user, **attach_kwargs)
    assert_grads_equal(got, run(student, combined))
    assert_grads_differ(got, run(student, user))
    assert (stats["training_forwards"], stats["via_loss_value"], stats["via_gradient"]) == (1, 1, 0)
    assert len(recorder.training) == 1
    assert torch.equal(recorder.training[0]["targets"], y)


def test_reference_cache_serves_repeated_inputs_with_identical_gradients(
    student, reference_model, batch
):
    from labelkeep_plugins.reference.cache import ReferenceCache

    x, y = batch

    def step(model: nn.Module) -> None:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    cached_student = copy.deepcopy(student)
    cache = ReferenceCache()
    cached = InjectionHandle(
        cached_student,
        snapshot_reference(reference_model),
        LossComposer(LossConfig()),
        reference_cache=cache,
    )
    step(cached_student)
    step(cached_student)  # the same inputs again: served from the cache
    cached.detach()
    assert cache.stats.hits == len(y) and cache.stats.misses == len(y)
    plain = attach(student, reference_model)
    step(student)
    plain.detach()
    assert_grads_equal(grads_of(cached_student), grads_of(student), atol=0, rtol=0)


def test_eval_mode_backwards_reach_their_subscribers_until_unsubscribed() -> None:
    """Adapters hear the backwards the loss never reached (a model left in eval mode)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    heard: list[int] = []
    with attach(model, snapshot_reference(model)) as handle:
        unsubscribe = handle.on_eval_mode_backward(lambda: heard.append(1))
        model.eval()
        model(torch.randn(5, 4))  # evaluation without no_grad and no backward: not training
        assert heard == []
        model(torch.randn(5, 4)).sum().backward()
        assert heard == [1]
        unsubscribe()
        unsubscribe()  # twice is harmless
        model(torch.randn(5, 4)).sum().backward()
        assert heard == [1] and handle.stats.eval_mode_backwards == 2
