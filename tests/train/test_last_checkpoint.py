"""``last.ckpt`` is the newest training state: written every epoch / N steps / time interval and when
training ends, whatever the monitored metric did; every shipped config uses that callback.

These tests also pin the Lightning internals :class:`pynodeta.train.ModelCheckpoint` builds on
(its triggers, ``_save_last_checkpoint``, the skip-at-same-step rule): a Lightning upgrade that
changes them fails here, not in a user's run.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from datetime import timedelta

import lightning
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pynodeta.train import AtomicCheckpointIO, ModelCheckpoint, TrainingModule, shipped_config_path, shipped_configs

STEPS_PER_EPOCH = 4


class _ScoreFallsEveryEpoch(TrainingModule):
    """A linear regression whose logged ``val/score`` is best in epoch 0 and worse after it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.linear(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/score", -float(self.current_epoch))


def _loader():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS_PER_EPOCH * 2, 3, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=2)


class _LastSeenAt(Callback):
    """Records, at the start of every training batch, the global_step held by last.ckpt (None: no file)."""

    def __init__(self, path):
        self.path, self.seen = path, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        held = torch.load(self.path, weights_only=False)["global_step"] if self.path.is_file() else None
        self.seen[trainer.global_step] = held


def _fit(tmp_path, checkpoint: ModelCheckpoint, **trainer_options):
    torch.manual_seed(0)
    module = _ScoreFallsEveryEpoch()
    seen = _LastSeenAt(tmp_path / "last.ckpt")
    trainer = lightning.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[checkpoint, seen], plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
        **trainer_options)
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    return trainer, module, seen.seen


def _held(path) -> dict:
    return torch.load(path, weights_only=False)


def test_last_is_the_final_epoch_not_the_best_one(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max", save_last=True)
    trainer, module, seen = _fit(tmp_path, checkpoint, max_epochs=3)
    last = _held(tmp_path / "last.ckpt")
    assert last["global_step"] == trainer.global_step == 3 * STEPS_PER_EPOCH and last["epoch"] == 2
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 3
    for name, value in module.state_dict().items():
        assert torch.equal(last["state_dict"][name], value), name
    # the best file is still the first epoch's, and last.ckpt followed every epoch
    assert [p.name for p in tmp_path.glob("epoch=*.ckpt")] == [f"epoch=0-step={STEPS_PER_EPOCH}.ckpt"]
    assert seen[STEPS_PER_EPOCH] == STEPS_PER_EPOCH and seen[2 * STEPS_PER_EPOCH] == 2 * STEPS_PER_EPOCH


def test_no_top_k_still_writes_last_every_epoch(tmp_path):
    # the shipped diffusion configs' settings: with Lightning's class nothing is written until the end
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_epochs=1)
    trainer, _, seen = _fit(tmp_path, checkpoint, max_epochs=3, check_val_every_n_epoch=10)
    assert seen[STEPS_PER_EPOCH] == STEPS_PER_EPOCH and seen[2 * STEPS_PER_EPOCH] == 2 * STEPS_PER_EPOCH
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]
    assert _held(tmp_path / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH


def test_every_n_steps_and_max_steps_mid_epoch(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=3)
    trainer, module, seen = _fit(tmp_path, checkpoint, max_steps=7)  # stops inside the second epoch
    assert [seen[step] for step in range(7)] == [None, None, None, 3, 3, 3, 6]
    last = _held(tmp_path / "last.ckpt")
    assert last["global_step"] == 7  # written after the last step, not left at the periodic step 6
    for name, value in module.state_dict().items():
        assert torch.equal(last["state_dict"][name], value), name


def test_every_train_time_interval(tmp_path):
    # a zero interval is due at every step: the trigger the GPU presets use, made observable
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0,
                                 train_time_interval=timedelta(seconds=0))
    _, _, seen = _fit(tmp_path, checkpoint, max_steps=5)
    assert [seen[step] for step in range(5)] == [None, 1, 2, 3, 4]


def test_a_step_save_at_an_epoch_end_keeps_that_epochs_best_checkpoint(tmp_path):
    # last.ckpt written at the epoch's last step must not make Lightning skip the validation-end best save
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/score", mode="min", save_last=True,
                                 every_n_train_steps=STEPS_PER_EPOCH)
    _fit(tmp_path, checkpoint, max_epochs=2)
    assert checkpoint.best_model_path.endswith(f"epoch=1-step={2 * STEPS_PER_EPOCH}.ckpt")


def test_save_last_link_is_refused():
    with pytest.raises(ValueError, match="save_last=True"):
        ModelCheckpoint(save_last="link")


def _shipped_checkpoint_callback(name: str) -> ModelCheckpoint:
    callbacks = yaml.safe_load(shipped_config_path(name).read_text())["trainer"]["callbacks"]
    found = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert len(found) == 1, f"{name}: expected one ModelCheckpoint, got {found}"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Callback, "callback")
    return parser.instantiate(parser.parse_object({"callback": found[0]})).callback


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_writes_last_periodically(name):
    callback = _shipped_checkpoint_callback(name)
    assert isinstance(callback, ModelCheckpoint), f"{name}: use pynodeta.train.ModelCheckpoint"
    assert callback.save_last is True
    triggers = [callback._every_n_epochs >= 1, callback._every_n_train_steps >= 1,
                callback._train_time_interval is not None]
    assert sum(triggers) == 1, f"{name}: no periodic last.ckpt"
    if name.startswith("edm2_img"):  # hours-long GPU runs: about every 30 minutes of training
        assert callback._train_time_interval == timedelta(minutes=30)
    elif callback._every_n_epochs:
        assert callback._every_n_epochs == 1


# --- a diffusion run: last.ckpt holds exactly the weights and EMA states the end-of-fit evaluation uses ----------
class _StateAtFitEnd(Callback):
    """Copies, when fit ends (before the module's end-of-fit evaluation), the step, weights and both EMAs;
    records the classic EMA's update count in each periodic last.ckpt."""

    def __init__(self, path):
        self.path, self.periodic_ema_updates = path, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.path.is_file():
            held = torch.load(self.path, weights_only=False)
            ema = held["pynodeta_weight_averages"]["ema"]["state"]
            self.periodic_ema_updates[held["global_step"]] = ema["num_updates"]

    def on_fit_end(self, trainer, pl_module):
        from pynodeta.train.ema_callback import PowerFunctionEMACallback

        (phema,) = [c for c in trainer.callbacks if isinstance(c, PowerFunctionEMACallback)]
        self.step = trainer.global_step
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.ema = pl_module.ema.state_dict()["shadow_params"]
        self.phema = phema.ema.state_dict()


def test_diffusion_last_checkpoint_is_the_evaluated_state_after_max_steps_mid_epoch(tmp_path):
    from pynodeta.data import DigitsDataModule
    from pynodeta.models import DDPMUNet
    from pynodeta.train import DiffusionModule, EDMObjective, EMAAveraging, EvalSettings
    from pynodeta.train.ema_callback import PowerFunctionEMACallback

    torch.manual_seed(0)
    unet = DDPMUNet(image_size=8, in_channels=1, channels=8, channel_mult=[1, 2], num_res_blocks=1,
                    attention_resolutions=[], dropout=0.0, norm_groups=1, time_scale=250.0)  # EDM's c_noise
    module = DiffusionModule(unet, EDMObjective(), averaging=EMAAveraging(0.9),
                             evaluation=EvalSettings(steps=2, num_samples=16, nll_num_images=1, num_bins=17))
    at_end = _StateAtFitEnd(tmp_path / "last.ckpt")
    callbacks = [ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=4),
                 PowerFunctionEMACallback(snapshot_every=None), at_end]
    trainer = lightning.Trainer(max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                                default_root_dir=tmp_path)
    datamodule = DigitsDataModule(batch_size=16, normalization="diffusion")
    trainer.fit(module, datamodule=datamodule)
    assert trainer.num_training_batches > 6  # max_steps stopped the run inside its first epoch

    assert at_end.periodic_ema_updates == {4: 4}  # the step-4 save held that step's EMA, not step 3's
    last = _held(tmp_path / "last.ckpt")
    assert last["global_step"] == at_end.step == 6
    for name, value in at_end.weights.items():
        assert torch.equal(last["state_dict"][name], value), name
    assert last["pynodeta_weight_averages"]["ema"]["state"]["num_updates"] == 6
    for saved, now in zip(last["pynodeta_weight_averages"]["ema"]["state"]["shadow_params"], at_end.ema, strict=True):
        assert torch.equal(saved, now)
    phema_state = last["pynodeta_weight_averages"]["power_ema"]["state"]
    assert phema_state["step"] == at_end.phema["step"] == 6
    for saved, now in zip(phema_state["averages"], at_end.phema["averages"], strict=True):
        for name in now:
            assert torch.equal(saved[name], now[name]), name


# --- a shipped config killed mid-run and resumed -----------------------------------------------------------------
TINY_DIGITS_EDM = ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
                   "--trainer.log_every_n_steps", "1", "--model.init_args.model.init_args.channels", "8",
                   "--model.init_args.evaluation.num_samples", "16", "--model.init_args.evaluation.nll_num_images", "1",
                   "--model.init_args.evaluation.steps", "2", "--plots", "false",
                   "--num_threads", "1"]  # one fixed count: a count that follows the load changes reductions' round-off


def _pynodeta_fit(tmp_path, *args) -> list[str]:
    return [sys.executable, "-m", "pynodeta.cli", "fit", "--config", "digits_edm", *TINY_DIGITS_EDM,
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *args]


def _rows(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("limits", [[], ["--trainer.max_steps", "1000", "--trainer.check_val_every_n_epoch", "1"]],
                         ids=["epochs", "max_steps-and-validation"])
def test_a_killed_shipped_run_resumes_to_the_uninterrupted_result(tmp_path, limits):
    """With max_steps set, Lightning resumed an epoch-end state as a cut-short epoch and skipped batches (the
    resumed fit ended 2 steps short); last.ckpt holds it as the next epoch's start, read alike either way."""
    root = tmp_path / "runs" / "digits_edm"
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    # the shipped budget (1000 epochs, 8 minutes): only the kill ends this run. Its 12 steps stay inside the
    # 100-step warm-up, where the learning rate does not depend on the clock (the cosine after it does)
    killed = subprocess.Popen(_pynodeta_fit(tmp_path, *limits), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not last.is_file() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert last.is_file(), killed.stderr.read().decode()[-2000:] if killed.poll() is not None else "timeout"
    finally:
        killed.kill()  # SIGKILL: no hook runs, nothing is flushed
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    saved_step = torch.load(last, weights_only=False)["global_step"]
    assert saved_step > 0 and saved_step % 3 == 0  # an epoch boundary of 3-batch epochs

    resumed = subprocess.run(_pynodeta_fit(tmp_path, *limits, "--trainer.max_epochs", "4", "--ckpt_path", str(last)),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    uninterrupted = subprocess.run(_pynodeta_fit(tmp_path, *limits, "--trainer.max_epochs", "4"), capture_output=True,
                                   text=True)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["version_0", "version_1"]

    resumed_state = torch.load(last, weights_only=False)
    full_state = torch.load(root / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed_state["global_step"] == full_state["global_step"] == 12
    for name, value in full_state["state_dict"].items():  # exact resume: the same weights and EMA
        assert torch.equal(resumed_state["state_dict"][name], value), name
    saved_profiles, full_profiles = _power_ema(resumed_state)["averages"], _power_ema(full_state)["averages"]
    for saved, full in zip(saved_profiles, full_profiles, strict=True):
        assert saved.keys() == full.keys()
        for name in full:
            assert torch.equal(saved[name], full[name]), name

    # metrics.csv: every step and epoch logged exactly once, with the uninterrupted run's values
    def logged(rows, key):
        return sorted((row["epoch"], row["step"], row[key]) for row in rows if row.get(key))

    rows, full_rows = _rows(root / "version_0"), _rows(root / "version_1")
    for key in ("train/loss_step", "train/loss_epoch", "val/loss"):
        assert logged(rows, key) == logged(full_rows, key), key
    assert [int(epoch) for epoch, _, _ in logged(rows, "train/loss_epoch")] == [0, 1, 2, 3]
    assert len(logged(rows, "val/loss")) == (4 if limits else 0)


@pytest.mark.slow
@pytest.mark.parametrize("limits", [[], ["--trainer.max_steps", "1000"]], ids=["epochs", "max_steps"])
def test_a_finished_run_extended_by_epochs_trains_the_new_epochs(tmp_path, limits):
    """A run that ended at max_epochs 1 and is resumed with max_epochs 2 trains one more epoch (it trained none
    with max_steps set: its last.ckpt read as an unfinished epoch)."""
    last = tmp_path / "runs" / "digits_edm" / "version_0" / "checkpoints" / "last.ckpt"
    first = subprocess.run(_pynodeta_fit(tmp_path, *limits, "--trainer.max_epochs", "1"), capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert torch.load(last, weights_only=False)["global_step"] == 3
    more = subprocess.run(_pynodeta_fit(tmp_path, *limits, "--trainer.max_epochs", "2", "--ckpt_path", str(last)),
                          capture_output=True, text=True)
    assert more.returncode == 0, more.stderr[-2000:]
    assert torch.load(last, weights_only=False)["global_step"] == 6


def _power_ema(checkpoint: dict) -> dict:
    """The power-function EMA's state in a checkpoint (the average digits_edm evaluates)."""
    return checkpoint["pynodeta_weight_averages"]["power_ema"]["state"]
