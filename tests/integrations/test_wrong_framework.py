"""Each framework's callback, given to the other framework, stops at once with a TypeError that
names the class to use (the two classes once had the same name)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning.pytorch")
transformers = pytest.importorskip("transformers")

from torch_lookahead.integrations.lightning import LightningSlowWeightsCallback  # noqa: E402
from torch_lookahead.integrations.transformers import (  # noqa: E402
    TransformersSlowWeightsCallback,
)

pytestmark = [pytest.mark.integrations, pytest.mark.filterwarnings("ignore:.*LeafSpec.*")]


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_lightning_callback_in_a_hugging_face_trainer_names_the_right_one(
    tmp_path: Path,
) -> None:
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(TypeError, match="TransformersSlowWeightsCallback"):
        transformers.Trainer(
            model=nn.Linear(2, 1), args=args, callbacks=[LightningSlowWeightsCallback()]
        )


def test_the_hugging_face_callback_in_a_lightning_trainer_names_the_right_one() -> None:
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TransformersSlowWeightsCallback()],
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)))
    with pytest.raises(TypeError, match="LightningSlowWeightsCallback"):
        trainer.fit(Tiny(), data)
