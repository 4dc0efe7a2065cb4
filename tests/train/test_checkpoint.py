"""Checkpoints: exact resume (identical next-step loss) and atomic writes."""

from __future__ import annotations

import os

import lightning
import pytest
import torch

from pynodeta.data import DigitsDataModule
from pynodeta.train import AtomicCheckpointIO, ModelCheckpoint, NODEClassifier, TABNAdamW, atomic_torch_save

from .tiny_models import TinyDigitsClassifier


class _LossRecorder(lightning.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


def _fit(tmp_path, max_epochs: int, seed: int, ckpt_path=None, checkpoint_dir=None):
    torch.manual_seed(seed)  # a different seed per run: only the checkpoint can make them agree
    # dropout draws from the global RNG, augmentation from the data module's generator
    module = NODEClassifier(TinyDigitsClassifier(dropout=0.3), optim=TABNAdamW(step_epochs=1))
    recorder = _LossRecorder()
    callbacks = [recorder]
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True))
    trainer = lightning.Trainer(
        max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
        enable_checkpointing=checkpoint_dir is not None, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16, augment=True, seed=3), ckpt_path=ckpt_path)
    return recorder.losses, module


def test_resume_gives_the_identical_next_step_loss(tmp_path):
    uninterrupted, full_module = _fit(tmp_path / "a", max_epochs=3, seed=0)
    first_part, _ = _fit(tmp_path / "b", max_epochs=1, seed=0, checkpoint_dir=tmp_path / "ckpt")
    assert torch.equal(first_part[0], uninterrupted[0]) and torch.equal(first_part[1], uninterrupted[1])
    resumed, resumed_module = _fit(tmp_path / "c", max_epochs=3, seed=99, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert len(resumed) == 4
    for step, loss in enumerate(resumed, start=2):
        assert torch.equal(loss, uninterrupted[step]), (step, loss, uninterrupted[step])
    for p, q in zip(resumed_module.parameters(), full_module.parameters()):
        assert torch.equal(p, q)


def test_resume_without_rng_state_differs(tmp_path):
    # The check above can fail: dropped RNG state changes the next dropout mask and the loss.
    uninterrupted, _ = _fit(tmp_path / "a", max_epochs=2, seed=0)
    _fit(tmp_path / "b", max_epochs=1, seed=0, checkpoint_dir=tmp_path / "ckpt")
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    del checkpoint["pynodeta_rng_states"]
    torch.save(checkpoint, tmp_path / "no_rng.ckpt")
    resumed, _ = _fit(tmp_path / "c", max_epochs=2, seed=99, ckpt_path=tmp_path / "no_rng.ckpt")
    assert not torch.equal(resumed[0], uninterrupted[2])


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.ckpt"
    atomic_torch_save({"step": 1}, target)
    atomic_torch_save({"step": 2}, target)
    assert torch.load(target)["step"] == 2
    assert os.listdir(tmp_path) == ["model.ckpt"]


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "model.ckpt"
    atomic_torch_save({"step": 1}, target)

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 1
    assert os.listdir(tmp_path) == ["model.ckpt"]
