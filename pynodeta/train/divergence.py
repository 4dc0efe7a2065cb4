"""Stop a diverging run at its first non-finite training loss, before the weights take the step.

``pynodeta fit`` adds :class:`StopOnNonFiniteLoss` to every trainer. The check runs in
``on_before_backward`` (automatic and manual optimisation both pass through it), so the optimiser
never steps with a NaN gradient: the weights, the EMA (classic or power-function) and its
snapshots keep their last finite state, and no checkpoint is written after the failure
(:class:`pynodeta.train.checkpointing.ModelCheckpoint` writes none on an exception). The raised
:class:`TrainingDiverged` ends ``fit`` without its end-of-fit evaluation; the command prints it as
one ``pynodeta: error: ...`` line and exits with status 1.
"""

from __future__ import annotations

from pathlib import Path

import lightning
import torch

__all__ = ["StopOnNonFiniteLoss", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; ``step`` is the optimiser steps done before it."""

    def __init__(self, message: str, step: int, loss: float):
        super().__init__(message)
        self.step, self.loss = step, loss


class StopOnNonFiniteLoss(lightning.Callback):
    """Raises :class:`TrainingDiverged` when a training loss is NaN or ±inf, before its backward pass."""

    def on_before_backward(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule,
                           loss: torch.Tensor) -> None:
        # One host sync per step; under DDP every rank stops together, whichever rank diverged.
        finite = trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach()).all()), all=True)
        if finite:
            return
        value = float(loss.detach().float().flatten()[0]) if loss.numel() else float("nan")
        step = trainer.global_step
        raise TrainingDiverged(
            f"training diverged: the training loss is {value} at global step {step} (epoch {trainer.current_epoch}); "
            f"stopped before the optimiser step, so no weights, EMA, snapshot or checkpoint hold it. "
            f"{_kept_checkpoint(trainer)}Lower the learning rate (e.g. --model.init_args.optim.init_args.lr) or "
            f"clip gradients harder, then resume with --ckpt_path or start again", step, value)


def _kept_checkpoint(trainer: lightning.Trainer) -> str:
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") if callback is not None else ""
    if last and Path(last).is_file():
        return f"The newest checkpoint, {last}, is kept as it was. "
    return "No checkpoint was written before. "
