"""What every built-in tuner shares: retuning during the run stays off the plugin registry."""

from __future__ import annotations

import pytest
import torch

from labelkeep_plugins import Config
from labelkeep_plugins.config import LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.tuners.catchup import CatchUpTuner
from labelkeep_plugins.tuners.softadapt import SoftAdaptTuner


def test_retuning_during_the_run_reads_no_plugin_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rescale (about every step) must not re-collect every plugin's terms."""
    import labelkeep_plugins.plugins as plugins

    loss = LossConfig(weights={"ce": 1.0, "kd": 1.0, "hard": 0.5}, temperature=4.0, focal=None)
    tuners = [CatchUpTuner(Config(loss=loss, tuner="catchup"))]
    tuners.append(SoftAdaptTuner(Config(loss=loss, tuner="softadapt")))
    collected: list[str] = []
    original = plugins.collect
    monkeypatch.setattr(plugins, "collect", lambda hook: collected.append(hook) or original(hook))
    torch.manual_seed(0)
    for tuner in tuners:
        for step in range(45):
            student, reference = torch.randn(8, 5), torch.randn(8, 5)
            terms = {
                "ce": torch.tensor(1.0 / (step + 1)),
                "kd": torch.tensor(0.5),
                "hard": torch.tensor(0.2),
            }
            tuner.labelkeep_training_step(
                student_logits=student,
                reference_logits=reference,
                targets=torch.randint(0, 5, (8,)),
                terms=terms,
            )
        assert set(tuner.loss_config().weights) == set(loss.weights)
    assert collected == []


def test_reweighting_checks_names_and_values_without_the_registry() -> None:
    loss = LossConfig(weights={"ce": 1.0, "kd": 1.0}, temperature=4.0, focal=None)
    assert loss.reweighted({"kd": 0.25}).weights == {"ce": 1.0, "kd": 0.25}
    assert loss.weights == {"ce": 1.0, "kd": 1.0}  # the original is left alone
    with pytest.raises(ConfigError, match=r"'hard'.*not in this configuration"):
        loss.reweighted({"hard": 1.0})
    with pytest.raises(ConfigError, match=r"weights\.kd"):
        loss.reweighted({"kd": float("nan")})


def test_the_removed_online_tuner_is_named_with_what_to_use_instead() -> None:
    from labelkeep_plugins.tuners.base import make_tuner

    with pytest.raises(ConfigError, match=r"tuner 'online' was removed.*tuner: catchup"):
        make_tuner(Config(tuner="online"))
