"""The Lightning callback: one update per optimiser step, snapshots every N steps, exact resume."""

from types import SimpleNamespace

import lightning
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pynodeta.ema import posthoc_reconstruct
from pynodeta.train.ema_callback import PowerFunctionEMACallback


class _Regression(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.model(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=generator)  # 3 batches: step 3 ends an epoch
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=False)


def _fit(tmp_path, max_epochs, callback, ckpt_path=None, accumulate=1):
    module = _Regression()
    trainer = lightning.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback],
                                accumulate_grad_batches=accumulate, num_sanity_val_steps=0)
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return trainer, module


def test_updates_once_per_optimiser_step_and_snapshots_every_n(tmp_path):
    callback = PowerFunctionEMACallback(snapshot_every=2)
    _fit(tmp_path, 4, callback, accumulate=3)  # 3 batches per epoch: one optimiser step per epoch
    assert callback.ema.step == 4
    assert sorted(p.name for p in (tmp_path / "phema").iterdir()) == ["phema-0000000002.pt", "phema-0000000004.pt"]
    rebuilt = posthoc_reconstruct(tmp_path / "phema", 0.10)
    torch.testing.assert_close(rebuilt["weight"], callback.averaged(0.10).weight)


def test_resume_from_trainer_checkpoint_is_exact(tmp_path):
    straight = PowerFunctionEMACallback()
    _fit(tmp_path / "a", 2, straight)

    first = PowerFunctionEMACallback()
    trainer, _ = _fit(tmp_path / "b", 1, first)
    checkpoint = tmp_path / "b" / "stop.ckpt"
    trainer.save_checkpoint(checkpoint)  # at an epoch end, where Lightning's own resume is exact
    resumed = PowerFunctionEMACallback()
    _fit(tmp_path / "b", 2, resumed, ckpt_path=checkpoint)
    assert resumed.ema.step == 6 and resumed.ema.run_id == first.ema.run_id
    for sigma_rel in (0.05, 0.10):
        for a, b in zip(straight.averaged(sigma_rel).parameters(), resumed.averaged(sigma_rel).parameters()):
            assert torch.equal(a, b)


def test_bad_arguments_name_the_fix(tmp_path):
    with pytest.raises(AttributeError, match="target='net'"):
        _fit(tmp_path, 1, PowerFunctionEMACallback(target="net"))
    with pytest.raises(ValueError, match="snapshot_every must be >= 1"):
        PowerFunctionEMACallback(snapshot_every=0)


class _RankTrainer:
    """A trainer of one DDP rank where ``log_dir`` is what it is in Lightning: a collective (a broadcast of
    rank 0's folder), so it may be read on every rank (setup), never in a branch one rank alone takes."""

    def __init__(self, log_dir, rank_zero: bool):
        self._log_dir, self.is_global_zero, self.global_step = str(log_dir), rank_zero, 0
        self.collectives_allowed = True
        self.strategy = SimpleNamespace(broadcast=lambda value, src=0: value)

    @property
    def log_dir(self):
        if not self.collectives_allowed:
            raise AssertionError("trainer.log_dir read where one rank alone does: under DDP that waits for good")
        return self._log_dir


def test_only_global_rank_zero_writes_snapshots_and_no_collective_waits_on_it(tmp_path):
    module = _Regression()
    for rank_zero, folder in ((False, "other_rank"), (True, "rank0")):
        callback = PowerFunctionEMACallback(snapshot_every=1)  # the folder comes from trainer.log_dir
        trainer = _RankTrainer(tmp_path / folder, rank_zero)
        callback.setup(trainer, module, "fit")
        trainer.collectives_allowed = False  # from here on each rank runs alone until the next step's gradients
        for step in (1, 2):
            trainer.global_step = step
            callback.on_train_batch_end(trainer, module, None, None, 0)
        assert callback.ema.step == 2  # every rank keeps the averages
    assert not (tmp_path / "other_rank").exists()
    assert len(list((tmp_path / "rank0" / "phema").iterdir())) == 2
