"""DiffusionAdam's cosine decay over the run: the step limit and the wall-time limit, and its refusals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, Timer
from torch import nn

from pynodeta.train.diffusion_optim import DiffusionAdam
from pynodeta.train.run_progress import RunProgress


class _Regression(pl.LightningModule):
    def __init__(self, optim: DiffusionAdam):
        super().__init__()
        self.linear, self.optim = nn.Linear(4, 1), optim

    def training_step(self, batch, batch_index):
        x, y = batch
        return (self.linear(x) - y).square().mean()

    def configure_optimizers(self):
        return self.optim.build(self)


class _LearningRates(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_index):
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(optim: DiffusionAdam, **trainer_options) -> list[float]:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    rates = _LearningRates()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[rates], **trainer_options)
    trainer.fit(_Regression(optim), torch.utils.data.DataLoader(data, batch_size=4))
    return rates.seen


def test_cosine_follows_the_step_limit_after_the_warm_up():
    lr, warmup, total = 1e-2, 4, 24
    seen = _fit(DiffusionAdam(lr=lr, warmup_steps=warmup, decay="cosine"), max_steps=total)
    expected = [lr * (step + 1) / warmup if step < warmup else lr * 0.5 * (1 + math.cos(math.pi * step / total))
                for step in range(total)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_ends_where_the_epochs_end():
    # 8 batches per epoch, 3 epochs: the run's length comes from max_epochs when max_steps is not set
    seen = _fit(DiffusionAdam(lr=1e-2, warmup_steps=0, decay="cosine"), max_epochs=3)
    assert len(seen) == 24
    assert seen[12] == pytest.approx(1e-2 * 0.5)          # half way
    assert seen[-1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 23 / 24)))


def test_no_decay_stays_constant_after_the_warm_up():
    seen = _fit(DiffusionAdam(lr=1e-2, warmup_steps=4), max_steps=12)
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3] + [1e-2] * 9)


class _FixedTimer(Timer):
    """A Timer that reports a fixed elapsed time out of its duration."""

    def __init__(self, elapsed: float, duration: float):
        super().__init__(duration={"seconds": duration})
        self.elapsed = elapsed

    def time_elapsed(self, stage="train") -> float:
        return self.elapsed


def test_progress_is_the_larger_of_steps_and_wall_time():
    timer = _FixedTimer(elapsed=30.0, duration=120.0)
    trainer = SimpleNamespace(estimated_stepping_batches=1000, callbacks=[timer])
    progress = RunProgress(trainer, "test")
    assert progress(100) == pytest.approx(0.25)     # the clock is ahead of the steps
    assert progress(500) == pytest.approx(0.5)      # the steps are ahead of the clock
    timer.elapsed = 200.0                          # past the budget: the schedule stays at its end
    assert progress(10) == 1.0


def test_progress_from_the_clock_alone_when_steps_are_unbounded():
    trainer = SimpleNamespace(estimated_stepping_batches=float("inf"), callbacks=[_FixedTimer(45.0, 60.0)])
    assert RunProgress(trainer, "test")(10**6 // 7) == pytest.approx(0.75)


def test_a_run_without_a_limit_is_refused():
    trainer = SimpleNamespace(estimated_stepping_batches=float("inf"), callbacks=[])
    with pytest.raises(ValueError, match="max_steps, max_epochs or max_time"):
        RunProgress(trainer, "DiffusionAdam(decay='cosine')")


def test_bad_decay_and_detached_module_are_refused():
    with pytest.raises(ValueError, match="decay must be 'none'.*or 'cosine'.*got 'linear'"):
        DiffusionAdam(decay="linear")


def test_a_detached_module_takes_its_warm_up_then_needs_a_trainer():
    module = _Regression(DiffusionAdam())
    configured = DiffusionAdam(lr=1e-2, warmup_steps=2, decay="cosine").build(module)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    optimizer.step()
    with pytest.raises(ValueError, match="attached to a Trainer"):
        scheduler.step()
