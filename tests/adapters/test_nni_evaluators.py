"""NNI's LightningEvaluator and TransformersEvaluator, run for real with labelkeep's shims.

NNI 3.0 fails with current pytorch-lightning (``fit_loop.max_steps`` is read-only) and
transformers (``get_optimizer_cls_and_kwargs`` takes the model too); each test shows the
plain failure, then the same compression under labelkeep: the compressor's training
steps get the loss and the user's evaluation afterwards is metered. The models are tiny
and built from code (no download).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from labelkeep_plugins import Config
from labelkeep_plugins.zero_code.instrument import instrumented

TRAINING_STEPS = 3
SAMPLES, FEATURES, CLASSES, BATCH = 64, 16, 5, 16


def evaluator_module() -> Any:
    from nni.compression.utils import evaluator

    return evaluator


def check_report(report: dict[str, Any], samples: int) -> None:
    """The compressor's steps trained with the loss; the evaluation after it was metered."""
    nni_status = next(a for a in report["adapters"] if a["name"] == "nni")
    assert nni_status["state"] == "active"
    assert report["training_steps_with_loss"] == TRAINING_STEPS
    assert report["reference_intact"] is True
    assert report["failures"] == [] and report["warnings"] == []
    assert report["agreement"]["samples"] == samples


# -- pytorch-lightning -----------------------------------------------------------------------


def lightning_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    x = torch.randn(SAMPLES, FEATURES, generator=generator) + 0.5 * y[:, None].float()
    return TensorDataset(x, y)


def lightning_parts() -> tuple[Any, Any, Any]:
    """A LightningModule, and NNI's evaluator over a traced Trainer and data module."""
    import nni
    import pytorch_lightning as pl
    from nni.compression import LightningEvaluator

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(FEATURES, 16)
            self.out = nn.Linear(16, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(x)))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self) -> Any:
            return nni.trace(torch.optim.SGD)(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    trainer = nni.trace(pl.Trainer)(**lightning_trainer_options(), max_epochs=1)
    data = nni.trace(pl.LightningDataModule.from_datasets)(
        train_dataset=lightning_data(), val_dataset=lightning_data(), batch_size=BATCH
    )
    return Classifier(), LightningEvaluator(trainer, data), data


def lightning_trainer_options() -> dict[str, Any]:
    return {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }


def taylor_pruned(model: nn.Module, evaluator: Any, layer: str) -> None:
    from nni.compression.pruning import TaylorPruner

    config = [{"op_types": ["Linear"], "op_names": [layer], "sparse_ratio": 0.5}]
    pruner = TaylorPruner(model, config, evaluator, training_steps=TRAINING_STEPS)
    pruner.compress()
    pruner.unwrap_model()


@pytest.fixture
def lightning() -> Any:
    pl = pytest.importorskip("pytorch_lightning")
    if not evaluator_module().LIGHTNING_INSTALLED:
        pytest.skip("NNI did not see pytorch_lightning")
    return pl


def test_plain_nni_fails_on_this_pytorch_lightning(lightning: Any) -> None:
    model, evaluator, _ = lightning_parts()
    with pytest.raises(AttributeError, match="max_steps"):
        taylor_pruned(model, evaluator, "hidden")


def test_lightning_evaluator_under_labelkeep(lightning: Any) -> None:
    with instrumented(Config()) as session:
        model, evaluator, data = lightning_parts()
        taylor_pruned(model, evaluator, "hidden")
        lightning.Trainer(**lightning_trainer_options()).validate(
            model, datamodule=data, verbose=False
        )
        report = session.report()
    check_report(report, SAMPLES)
    assert report["agreement"]["labelled"] == SAMPLES  # validation_step's cross_entropy
    assert report["loss_paths"]["loss_value"] == TRAINING_STEPS


# -- transformers ----------------------------------------------------------------------------


class TokenData(Dataset):
    """Token ids whose label is whether the first token is in the upper half of the vocabulary."""

    def __init__(self, samples: int = 32, length: int = 8, vocabulary: int = 100) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocabulary, (samples, length), generator=generator)
        self.labels = (self.ids[:, 0] >= vocabulary // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": self.labels[index],
        }


def transformers_parts(output_dir: Path) -> tuple[nn.Module, Any, Any]:
    """A tiny BERT classifier from a config, its HF Trainer (traced) and NNI's evaluator."""
    import nni
    from nni.compression import TransformersEvaluator
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        max_steps=TRAINING_STEPS + 1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = nni.trace(Trainer)(
        model=model, args=arguments, train_dataset=TokenData(), eval_dataset=TokenData()
    )
    return model, trainer, TransformersEvaluator(trainer)


@pytest.fixture
def transformers(monkeypatch: pytest.MonkeyPatch) -> Any:
    module = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the HF Trainer needs it
    if not evaluator_module().TRANSFORMERS_INSTALLED:
        pytest.skip("NNI did not see transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return module


INTERMEDIATE = "bert.encoder.layer.0.intermediate.dense"


def test_plain_nni_fails_on_this_transformers(transformers: Any, tmp_path: Path) -> None:
    from transformers import Trainer

    # NNI swaps this class attribute without try/finally: its failure leaves it swapped.
    saved = Trainer.__dict__["get_optimizer_cls_and_kwargs"]
    model, _, evaluator = transformers_parts(tmp_path)
    try:
        with pytest.raises(TypeError, match="positional argument"):
            taylor_pruned(model, evaluator, INTERMEDIATE)
    finally:
        Trainer.get_optimizer_cls_and_kwargs = saved


def test_transformers_evaluator_under_labelkeep(transformers: Any, tmp_path: Path) -> None:
    with instrumented(Config()) as session:
        model, trainer, evaluator = transformers_parts(tmp_path)
        taylor_pruned(model, evaluator, INTERMEDIATE)
        trainer.evaluate()
        report = session.report()
    check_report(report, len(TokenData()))
    paths = report["loss_paths"]
    assert paths["loss_value"] + paths["gradient"] == TRAINING_STEPS
