"""ProgressLines: a fit whose progress bar is off still says how far it is."""

import re

import lightning
import pytest
import torch
from torch import nn

from pynodeta.train import ProgressLines


class _Tiny(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.linear(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lines_come_every_interval_with_step_loss_and_the_time_left(capsys):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer = lightning.Trainer(max_epochs=2, max_time="00:00:05:00", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[ProgressLines(every_seconds=1e-6)])
    trainer.fit(_Tiny(), data)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pynodeta: epoch")]
    assert len(lines) == 8  # every step, as the interval is shorter than one
    assert re.fullmatch(r"pynodeta: epoch 1, step 8, train/loss [\d.e-]+, [\d.]+ steps/s, \d+ s elapsed, "
                        r"stops within [\d.]+ min \(max_time\)", lines[-1]), lines[-1]


def test_the_interval_must_be_positive():
    with pytest.raises(ValueError, match="every_seconds"):
        ProgressLines(every_seconds=0)
