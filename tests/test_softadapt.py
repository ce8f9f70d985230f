"""The SoftAdapt tuner: the paper's formulas, the interval, the total, state and bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from labelkeep_plugins import Config, ConfigError, attach, snapshot_reference
from labelkeep_plugins.config import LossConfig, SoftAdaptConfig
from labelkeep_plugins.plugins import tuner_factories
from labelkeep_plugins.tuners.base import make_tuner
from labelkeep_plugins.tuners.softadapt import SoftAdaptTuner, softadapt_weights


def _config(variant: str = "original", beta: float = 0.1, interval: int = 2) -> Config:
    loss = LossConfig(weights={"ce": 1.0, "kd": 1.0}, temperature=4.0, focal=None)
    return Config(loss=loss, tuner="softadapt", softadapt=SoftAdaptConfig(variant, beta, interval))


def _feed(tuner: SoftAdaptTuner, ce: float, kd: float) -> None:
    logits = torch.zeros(2, 3)
    terms = {"ce": torch.tensor(ce), "kd": torch.tensor(kd)}
    tuner.labelkeep_training_step(
        student_logits=logits, reference_logits=logits, targets=None, terms=terms
    )


# The paper's equations, by hand ----------------------------------------------------------


def test_original_is_a_softmax_of_the_rates() -> None:
    # rates: ce 2.0 - 3.0 = -1.0, kd 0.5 - 0.7 = -0.2; beta 0.5
    weights = softadapt_weights([3.0, 0.7], [2.0, 0.5], 0.5, "original")
    e_ce, e_kd = math.exp(0.5 * -1.0), math.exp(0.5 * -0.2)
    assert weights == pytest.approx([e_ce / (e_ce + e_kd), e_kd / (e_ce + e_kd)], rel=1e-12)


def test_normalized_divides_the_rates_by_their_absolute_sum() -> None:
    weights = softadapt_weights([3.0, 0.7], [2.0, 0.5], 2.0, "normalized")
    ns_ce, ns_kd = -1.0 / 1.2, -0.2 / 1.2
    e_ce, e_kd = math.exp(2.0 * ns_ce), math.exp(2.0 * ns_kd)
    assert weights == pytest.approx([e_ce / (e_ce + e_kd), e_kd / (e_ce + e_kd)], rel=1e-12)


def test_loss_weighted_multiplies_by_the_current_values() -> None:
    weights = softadapt_weights([3.0, 0.7], [2.0, 0.5], 0.5, "loss_weighted")
    n_ce, n_kd = 2.0 * math.exp(0.5 * -1.0), 0.5 * math.exp(0.5 * -0.2)
    assert weights == pytest.approx([n_ce / (n_ce + n_kd), n_kd / (n_ce + n_kd)], rel=1e-12)


def test_beta_zero_gives_equal_weights_and_large_rates_do_not_overflow() -> None:
    assert softadapt_weights([1.0, 5.0], [0.0, 1.0], 0.0, "original") == [0.5, 0.5]
    weights = softadapt_weights([0.0, 0.0], [1e6, 0.0], 10.0, "original")
    assert weights == pytest.approx([1.0, 0.0]) and all(math.isfinite(w) for w in weights)


# The tuner on a hand-computed sequence ---------------------------------------------------


def test_weights_follow_the_interval_means_and_sum_to_the_configured_total() -> None:
    tuner = SoftAdaptTuner(_config("original", beta=0.5, interval=2))
    applied: list[LossConfig] = []
    tuner.bind(applied.append)
    for ce, kd in [(3.0, 0.8), (3.0, 0.6), (2.0, 0.6), (2.0, 0.4)]:
        _feed(tuner, ce, kd)
    # points: (3.0, 0.7) then (2.0, 0.5); the total 2.0 shared by the softmax
    expected = softadapt_weights([3.0, 0.7], [2.0, 0.5], 0.5, "original")
    assert len(applied) == 1 and tuner.updates == 1
    assert dict(applied[0].weights) == pytest.approx({"ce": 2 * expected[0], "kd": 2 * expected[1]})
    assert sum(tuner.weights.values()) == pytest.approx(2.0)


def test_before_two_points_the_configured_weights_apply() -> None:
    tuner = SoftAdaptTuner(_config(interval=3))
    for _ in range(5):
        _feed(tuner, 1.0, 1.0)
    assert dict(tuner.loss_config().weights) == {"ce": 1.0, "kd": 1.0} and tuner.updates == 0


def test_a_term_the_injector_did_not_measure_keeps_its_weight() -> None:
    config = Config(
        loss=LossConfig(weights={"ce": 1.0, "kd": 1.0, "hard": 0.5}, focal=None),
        tuner="softadapt",
        softadapt=SoftAdaptConfig("original", 1.0, 1),
    )
    tuner = SoftAdaptTuner(config)
    for ce, kd in [(2.0, 1.0), (1.0, 1.0)]:
        _feed(tuner, ce, kd)  # no "hard" value is given
    assert tuner.weights["hard"] == 0.5
    assert tuner.weights["ce"] + tuner.weights["kd"] == pytest.approx(2.0)


def test_non_finite_values_skip_the_update() -> None:
    tuner = SoftAdaptTuner(_config(interval=1))
    _feed(tuner, 1.0, 1.0)
    _feed(tuner, float("nan"), 1.0)
    assert tuner.updates == 0 and tuner.trajectory[-1]["event"].startswith("skipped")


# Live in an injector: the user's loss is the ce term --------------------------------------


def test_attached_the_tuner_hears_ce_and_kd_and_switches_the_live_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = snapshot_reference(model)
    config = _config("loss_weighted", beta=0.1, interval=2)
    tuner = SoftAdaptTuner(config)
    handle = attach(model, reference, loss=tuner.loss_config())
    tuner.bind(handle.composer.defer)
    from labelkeep_plugins.plugins import load_plugins

    manager = load_plugins()
    manager.register(tuner)
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(6):
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    finally:
        manager.unregister(tuner)
        handle.detach()
    assert tuner.updates == 2
    assert set(tuner.trajectory[-1]["values"]) == {"ce", "kd"}
    handle.composer.apply_pending()  # the last update applies at the next forward
    assert dict(handle.composer.loss.weights) == pytest.approx(tuner.weights)


# State and bad input ---------------------------------------------------------------------


def test_state_round_trips_through_a_weights_only_checkpoint() -> None:
    tuner = SoftAdaptTuner(_config(interval=1))
    for ce, kd in [(2.0, 1.0), (1.5, 0.9), (1.0, 0.8)]:
        _feed(tuner, ce, kd)
    buffer = io.BytesIO()
    torch.save(tuner.state_dict(), buffer)
    buffer.seek(0)
    resumed = SoftAdaptTuner(_config(interval=1))
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.weights == tuner.weights and resumed.steps == 3
    assert resumed.state_dict() == tuner.state_dict()


def test_a_state_of_another_configuration_is_refused_and_nothing_is_lost() -> None:
    saved = SoftAdaptTuner(_config(beta=0.1)).state_dict()
    other = SoftAdaptTuner(_config(beta=0.2))
    before = other.state_dict()
    with pytest.raises(ConfigError, match="configured with"):
        other.load_state_dict(saved)
    with pytest.raises(ConfigError, match="from state of 'online'"):
        other.load_state_dict({"name": "online"})
    assert other.state_dict() == before


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"beta": float("inf")}, "softadapt.beta must be a finite number"),
        ({"beta": float("nan")}, "softadapt.beta must be a finite number"),
        ({"interval": 0}, "softadapt.interval must be a whole number"),
        ({"interval": 2.5}, "softadapt.interval must be a whole number"),
        ({"variant": "adaptive"}, "softadapt.variant must be one of"),
        ({"gamma": 1}, "unknown key"),
    ],
)
def test_bad_settings_name_the_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"tuner": "softadapt", "softadapt": section})


def test_registered_and_made_by_name() -> None:
    assert "softadapt" in tuner_factories()
    assert isinstance(make_tuner(_config()), SoftAdaptTuner)
