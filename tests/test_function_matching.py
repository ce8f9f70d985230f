"""Tests for the function-matching term ``fm`` (labelkeep_plugins.injector.function_matching).

As in test_injector.py, the injected step (the user's code unchanged, ``attach`` on) must
equal an explicit loss written by hand: ``w_ce * CE(student(x), y) + reduce(kd terms +
w_fm * KD(student(x_mix), reference(x_mix)))``. The copy ``x_mix`` is drawn from torch's
global RNG, so seeding before both steps gives the explicit loss the same copy.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN
from gradients import Grads, assert_grads_equal, max_difference
from torch import nn

from labelkeep_plugins import (
    InjectionHandle,
    LabelkeepError,
    attach,
    get_plugin_manager,
    hookimpl,
    load_plugins,
    snapshot_reference,
)
from labelkeep_plugins.config import FocalConfig, FunctionMatchingConfig, LossConfig
from labelkeep_plugins.errors import LabelkeepWarning
from labelkeep_plugins.injector.function_matching import GRADIENT_PATH_WARNING, mixed_copy
from labelkeep_plugins.loss.builtin_terms import hinton_kd
from labelkeep_plugins.loss.composer import LossComposer
from labelkeep_plugins.loss.terms import TermInputs
from labelkeep_plugins.plugins import loss_terms

SEED = 11
TEMPERATURE = 2.0
W_CE, W_KD, W_FM = 0.8, 1.0, 0.5
CLASSES = 5

Step = Callable[[nn.Module], None]


def fm_loss(w_fm: float | None = W_FM, *, noise: float = 0.1) -> LossConfig:
    """kd with focal weights (which fm must not get) plus fm at ``w_fm`` (None: no fm key)."""
    weights = {"ce": W_CE, "kd": W_KD} | ({} if w_fm is None else {"fm": w_fm})
    return LossConfig(
        weights=weights,
        temperature=TEMPERATURE,
        focal=FocalConfig(base=0.5, scale=2.0),
        function_matching=FunctionMatchingConfig(mixup_alpha=0.4, noise=noise),
    )


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"mean": values.mean, "sum": values.sum, "none": lambda: values}[reduction]()


class Explicit:
    """The combined loss written out by hand, with the copy drawn like the injector draws it."""

    def __init__(self, reference: nn.Module, loss: LossConfig) -> None:
        self.reference = reference
        self.loss = loss
        self.composer = LossComposer(loss)  # fm is left out of its extra terms
        self.w_fm = loss.weights.get("fm", 0.0)

    def copy_of(self, x: torch.Tensor) -> torch.Tensor:
        return mixed_copy(x, self.loss.function_matching)

    def copy_logits(
        self, model: nn.Module, x_mix: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            reference_logits = self.reference(x_mix)
        return model(x_mix), reference_logits

    @staticmethod
    def kd(student_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
        """KD per sample, no focal weights."""
        inputs = TermInputs(student_logits.float(), reference_logits.float(), None, TEMPERATURE)
        return hinton_kd(inputs)

    def fm(self, model: nn.Module, x_mix: torch.Tensor) -> torch.Tensor:
        """KD(student(x_mix), reference(x_mix)) per sample, no focal weights."""
        return self.kd(*self.copy_logits(model, x_mix))

    def ce(
        self,
        logits: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        fm: torch.Tensor,
        reduction: str = "mean",
        reference_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What one ``cross_entropy(logits, y, reduction=...)`` call stands for.

        ``reference_logits``: the reference's on ``x`` when already taken (under autocast,
        inside the forward, as the injector does); else computed here.
        """
        if reference_logits is None:
            with torch.no_grad():
                reference_logits = self.reference(x)
        extra = self.composer.extra_per_sample(logits, reference_logits, y)[0]
        user = F.cross_entropy(logits, y, reduction=reduction)
        return W_CE * user + _reduce(extra + self.w_fm * fm, reduction)


def grads_of(model: nn.Module) -> Grads:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def run(student: nn.Module, step: Step) -> Grads:
    model = copy.deepcopy(student)
    step(model)
    return grads_of(model)


def run_injected(
    student: nn.Module, reference: nn.Module, loss: LossConfig, step: Step
) -> tuple[Grads, InjectionHandle, nn.Module]:
    model = copy.deepcopy(student)
    with attach(model, reference, loss=loss) as handle:
        step(model)
    return grads_of(model), handle, model


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers()}


class CountingCNN(TinyCNN):
    """TinyCNN that counts its forwards (the student and the reference each their own)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


class TokenClassifier(nn.Module):
    """Takes integer token ids: nothing fm could mix."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(ids).mean(dim=1))


class Recorder:
    def __init__(self) -> None:
        self.terms: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def labelkeep_training_step(self, student_logits, reference_logits, targets, terms):
        self.terms.append(terms)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def reference(reference_model: nn.Module) -> nn.Module:
    return snapshot_reference(reference_model)


def autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


# --- registration -------------------------------------------------------------------------


def test_fm_is_registered_and_left_out_of_the_ordinary_terms():
    term = loss_terms()["fm"]
    assert term.on_perturbed_copy and not term.teacher
    assert LossConfig(weights={"fm": 0.5}).weights == {"ce": 1.0, "fm": 0.5}
    student, reference = torch.randn(4, CLASSES), torch.randn(4, CLASSES)
    y = torch.randint(0, CLASSES, (4,))
    with_fm, values = LossComposer(fm_loss()).extra_per_sample(student, reference, y)
    without_fm, _ = LossComposer(fm_loss(None)).extra_per_sample(student, reference, y)
    assert "fm" not in values
    assert torch.equal(with_fm, without_fm)


def test_mixed_copy_is_one_beta_mixup_per_batch_plus_relative_noise():
    x = torch.randn(64, 16, requires_grad=True)
    config = FunctionMatchingConfig(mixup_alpha=0.4, noise=0.0)
    torch.manual_seed(SEED)
    got = mixed_copy(x, config)
    torch.manual_seed(SEED)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(64)
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(got, lam * x.detach() + (1 - lam) * x.detach()[perm])
    assert not got.requires_grad
    torch.manual_seed(SEED)
    noisy = mixed_copy(x, FunctionMatchingConfig(mixup_alpha=0.4, noise=0.5))
    ratio = float((noisy - got).std() / x.detach().std())
    assert 0.45 < ratio < 0.55


# --- exactness ----------------------------------------------------------------------------

FINISHES: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "mean": ("mean", lambda loss: loss),
    "sum": ("sum", lambda loss: loss),
    "none_mean": ("none", lambda loss: loss.mean()),
    "none_sum": ("none", lambda loss: loss.sum()),
}


@pytest.mark.parametrize("finish", list(FINISHES))
def test_fm_matches_explicit_loss(student, reference, batch, finish):
    x, y = batch
    reduction, then = FINISHES[finish]
    explicit = Explicit(reference, fm_loss())

    def user(model: nn.Module) -> None:
        torch.manual_seed(SEED)
        then(F.cross_entropy(model(x), y, reduction=reduction)).backward()

    def combined(model: nn.Module) -> None:
        torch.manual_seed(SEED)
        fm = explicit.fm(model, explicit.copy_of(x))
        then(explicit.ce(model(x), x, y, fm, reduction)).backward()

    got, handle, _ = run_injected(student, reference, fm_loss(), user)
    assert_grads_equal(got, run(student, combined))
    without_fm, _, _ = run_injected(student, reference, fm_loss(0.0), user)
    assert max_difference(got, without_fm) > 1e-3
    assert (handle.stats.training_forwards, handle.stats.via_loss_value) == (1, 1)


def test_fm_under_gradient_accumulation(student, reference, batch):
    x, y = batch
    micro = list(zip(x.split(6), y.split(6), strict=True))
    explicit = Explicit(reference, fm_loss())

    def user(model: nn.Module) -> None:
        torch.manual_seed(SEED)
        for xb, yb in micro:
            (F.cross_entropy(model(xb), yb) / 2).backward()

    def combined(model: nn.Module) -> None:
        torch.manual_seed(SEED)
        for xb, yb in micro:
            fm = explicit.fm(model, explicit.copy_of(xb))
            (explicit.ce(model(xb), xb, yb, fm) / 2).backward()

    got, handle, _ = run_injected(student, reference, fm_loss(), user)
    assert_grads_equal(got, run(student, combined))
    assert handle.stats.via_loss_value == 2


def test_each_loss_call_on_one_forward_gets_fm_from_one_copy(batch):
    """User mixup (two cross_entropy calls on one forward): one copy, fm added to each call."""
    x, y = batch
    torch.manual_seed(0)
    student = CountingCNN()
    reference = snapshot_reference(student)
    explicit = Explicit(reference, fm_loss())
    lam = 0.7

    def user(model: nn.Module) -> None:
        torch.manual_seed(SEED)
        logits = model(x)
        (
            lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y.roll(1))
        ).backward()

    def combined(model: nn.Module) -> None:
        torch.manual_seed(SEED)
        fm = explicit.fm(model, explicit.copy_of(x))
        logits = model(x)
        first, second = explicit.ce(logits, x, y, fm), explicit.ce(logits, x, y.roll(1), fm)
        (lam * first + (1 - lam) * second).backward()

    got, handle, model = run_injected(student, reference, fm_loss(), user)
    assert_grads_equal(got, run(student, combined))
    assert model.calls == 2  # the user's forward and one copy, not one copy per loss call
    assert handle.stats.via_loss_value == 1


def test_replaced_perturbation_identity_gives_kd_without_focal_weights(student, reference, batch):
    """``perturb`` is injectable; the identity makes fm plain KD on x, without focal weights."""
    x, y = batch
    explicit = Explicit(reference, fm_loss())

    def combined(model: nn.Module) -> None:
        logits = model(x)
        with torch.no_grad():
            reference_logits = reference(x)
        plain_kd = hinton_kd(TermInputs(logits.float(), reference_logits, None, TEMPERATURE))
        explicit.ce(logits, x, y, plain_kd).backward()

    model = copy.deepcopy(student)
    with attach(model, reference, loss=fm_loss()) as handle:
        handle.function_matching.perturb = lambda x, config: x
        F.cross_entropy(model(x), y).backward()
    assert_grads_equal(grads_of(model), run(student, combined))


# --- AMP ----------------------------------------------------------------------------------


def _amp_steps(
    explicit: Explicit, x: torch.Tensor, y: torch.Tensor, loss_in_autocast: bool
) -> tuple[Step, Step, Step]:
    """The user's bf16 step, its explicit loss, and the explicit loss with an fp32 copy."""

    def user(model: nn.Module) -> None:
        torch.manual_seed(SEED)
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y) if loss_in_autocast else None
        (loss if loss is not None else F.cross_entropy(logits, y)).backward()

    def combined(model: nn.Module, copy_in_autocast: bool = True) -> None:
        torch.manual_seed(SEED)
        x_mix = explicit.copy_of(x)
        copy_context = torch.autocast("cpu", enabled=copy_in_autocast)
        with autocast():
            logits = model(x)
            with torch.no_grad():
                reference_logits = explicit.reference(x)  # the injector's runs in the forward
            if loss_in_autocast:  # the copy runs inside the user's autocast region
                with copy_context:
                    fm = explicit.fm(model, x_mix)
                loss = explicit.ce(logits, x, y, fm, reference_logits=reference_logits)
        if not loss_in_autocast:  # a fresh region (its own weight-cast cache), as the injector's
            with autocast(), copy_context:
                copy_logits = explicit.copy_logits(model, x_mix)
            fm = explicit.kd(*copy_logits)
            loss = explicit.ce(logits, x, y, fm, reference_logits=reference_logits)
        loss.backward()

    return user, combined, lambda model: combined(model, copy_in_autocast=False)


@pytest.mark.parametrize("loss_in_autocast", [True, False])
def test_fm_copy_runs_under_the_autocast_state_of_the_forward(
    student, reference, batch, loss_in_autocast
):
    """bf16 autocast: the copy's forwards run in bf16 even when the loss is computed outside."""
    x, y = batch
    user, combined, fp32_copy = _amp_steps(Explicit(reference, fm_loss()), x, y, loss_in_autocast)
    got, _, _ = run_injected(student, reference, fm_loss(), user)
    want = run(student, combined)
    assert_grads_equal(got, want)
    assert max_difference(got, run(student, fp32_copy)) > 10 * max(max_difference(got, want), 1e-7)


def test_fm_with_grad_scaler(student, reference, batch):
    """torch.amp.GradScaler works on CPU: scaled gradients equal, and after unscale_."""
    x, y = batch
    explicit = Explicit(reference, fm_loss())

    def loop(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor]) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        torch.manual_seed(SEED)
        with autocast():
            loss = loss_of(model)
        scaler.scale(loss).backward()
        scaled = grads_of(model)
        scaler.unscale_(optimizer)
        model.scaled = scaled  # type: ignore[assignment]

    def combined(model: nn.Module) -> torch.Tensor:
        fm = explicit.fm(model, explicit.copy_of(x))
        return explicit.ce(model(x), x, y, fm)

    got, _, model = run_injected(
        student, reference, fm_loss(), lambda m: loop(m, lambda m: F.cross_entropy(m(x), y))
    )
    want_model = copy.deepcopy(student)
    loop(want_model, combined)
    assert_grads_equal(model.scaled, want_model.scaled)
    assert_grads_equal(got, grads_of(want_model))


# --- side effects -------------------------------------------------------------------------


def test_batchnorm_buffers_equal_those_of_the_same_steps_without_fm(student, reference, batch):
    x, y = batch
    before = bn_buffers(student)

    def user(model: nn.Module) -> None:
        # lr 0: fm changes the gradients, and moved weights would move step 2's batch stats
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        for xb, yb in zip(x.split(6), y.split(6), strict=True):
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()

    _, _, with_fm = run_injected(student, reference, fm_loss(), user)
    _, _, without_fm = run_injected(student, reference, fm_loss(0.0), user)
    got, want = bn_buffers(with_fm), bn_buffers(without_fm)
    assert (
        got.keys() == want.keys() == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    )
    for name in got:
        assert torch.equal(got[name], want[name]), name
    assert int(got["bn.num_batches_tracked"]) == 2
    assert not torch.equal(got["bn.running_mean"], before["bn.running_mean"])


def test_copy_forwards_are_not_captured_or_counted(student, reference, batch):
    x, y = batch

    def user(model: nn.Module) -> None:
        torch.manual_seed(SEED)
        F.cross_entropy(model(x), y).backward()
        model.eval()
        with torch.no_grad():
            for xb in x.split(6):
                model(xb)

    _, with_fm, _ = run_injected(student, reference, fm_loss(), user)
    _, without_fm, _ = run_injected(student, reference, fm_loss(0.0), user)
    assert with_fm.stats.as_dict() == without_fm.stats.as_dict()
    assert with_fm.stats.forwards == 3 and with_fm.stats.evaluation_batches == 2
    assert with_fm.meter.samples == without_fm.meter.samples == len(x)


@pytest.mark.parametrize("weights", [None, 0.0])
def test_fm_off_runs_no_extra_forward(batch, weights):
    x, y = batch
    torch.manual_seed(0)
    model = CountingCNN()
    with attach(model, model, loss=fm_loss(weights)) as handle:
        F.cross_entropy(model(x), y).backward()
        assert model.calls == 1
        handle.composer.configure(fm_loss(W_FM))
        F.cross_entropy(model(x), y).backward()
        assert model.calls == 3  # on: the forward and its copy
        with torch.no_grad():
            model(x)
        assert model.calls == 4  # no copy for an evaluation forward


def test_training_step_hook_reports_the_fm_value(student, reference, batch):
    x, y = batch
    load_plugins()
    recorder = Recorder()
    get_plugin_manager().register(recorder)
    explicit = Explicit(reference, fm_loss())
    try:
        model = copy.deepcopy(student)
        with attach(model, reference, loss=fm_loss()):
            torch.manual_seed(SEED)
            F.cross_entropy(model(x), y).backward()
    finally:
        get_plugin_manager().unregister(recorder)
    torch.manual_seed(SEED)
    with torch.no_grad():
        want = explicit.fm(copy.deepcopy(student), explicit.copy_of(x)).mean()
    (terms,) = recorder.terms
    assert terms["fm"].dim() == 0 and not terms["fm"].requires_grad
    torch.testing.assert_close(terms["fm"], want)


# --- refusals and fail-over ---------------------------------------------------------------


def test_integer_inputs_raise_a_clear_error():
    model = TokenClassifier()
    ids, y = torch.randint(0, 10, (8, 6)), torch.randint(0, CLASSES, (8,))
    with attach(model, model, loss=fm_loss()), pytest.raises(LabelkeepError) as info:
        F.cross_entropy(model(ids), y)
    message = str(info.value)
    assert "fm" in message and "weights.fm: 0" in message and "continuous inputs" in message
    with attach(model, model, loss=fm_loss(0.0)):
        F.cross_entropy(model(ids), y).backward()  # without fm the same model trains


def test_keyword_only_input_raises_a_clear_error(student, reference, batch):
    x, y = batch
    with attach(student, reference, loss=fm_loss()), pytest.raises(LabelkeepError, match="fm"):
        F.cross_entropy(student(x=x), y)


def test_gradient_path_skips_fm_with_one_warning(student, reference, batch):
    x, y = batch
    explicit = Explicit(reference, fm_loss())

    def custom(logits: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.softmax(dim=1), F.one_hot(y, CLASSES).float())

    def user(model: nn.Module) -> None:
        for _ in range(2):
            custom(model(x)).backward()

    def combined(model: nn.Module) -> None:
        for _ in range(2):
            logits = model(x)
            with torch.no_grad():
                reference_logits = reference(x)
            extra = explicit.composer.extra_per_sample(logits, reference_logits, None)[0]
            (W_CE * custom(logits) + extra.mean()).backward()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, handle, _ = run_injected(student, reference, fm_loss(), user)
    fm_warnings = [w for w in caught if issubclass(w.category, LabelkeepWarning)]
    assert [str(w.message) for w in fm_warnings] == [GRADIENT_PATH_WARNING]
    assert_grads_equal(got, run(student, combined))
    assert handle.stats.via_gradient == 2
