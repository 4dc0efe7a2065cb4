"""LightningModules: image classification and trajectory regression with neural ODEs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import NODEModule
from .optim import OptimizerPreset

__all__ = ["NODEClassifier", "TrajectoryRegressor"]


class NODEClassifier(NODEModule):
    """Cross-entropy training of ``model: x (batch, *input_shape) -> logits (batch, num_classes)``.

    Batches are ``(x, y)`` with y (batch,) int64 class indices (the pynodeta.data image modules).
    Logs ``{stage}/loss``, ``{stage}/acc``, ``{stage}/nfe_forward``, ``train/nfe_backward``,
    ``train/tabn_reg``; the loss that is minimised is ``train/loss + train/tabn_reg``.
    """

    def __init__(
        self,
        model: nn.Module,                       # the classifier network
        optim: OptimizerPreset | None = None,   # default TABNAdamW() (AdamW 1e-3, StepLR, clipping 10 and 1)
        tabn_reg_weight: float | None = None,   # λ of the TA-BN regulariser; None: the layers' own (0.1); 0: off
        label_smoothing: float = 0.0,
    ):
        super().__init__(model, optim, tabn_reg_weight)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _loss_and_metrics(self, batch):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        return loss, {"acc": accuracy}, len(y)


class TrajectoryRegressor(NODEModule):
    """Fit observed trajectories: ``model(t0, y0, t) -> (len(t), batch, state_dim)``.

    Batches are ``(t, y0, y_traj)`` from ``pynodeta.data.TrajectoryDataModule``: t (n_times,),
    y0 (batch, state_dim), y_traj (n_times, batch, state_dim). The model is asked for the states at
    the times ``t - t[0]`` starting from y0 at time 0 (an autonomous system does not care where
    the clock starts; TA-BN's grid then covers [0, t[-1] - t[0]]).
    Logs ``{stage}/loss`` (the chosen one), ``{stage}/mse`` and ``{stage}/mae``.
    """

    def __init__(
        self,
        model: nn.Module,                       # e.g. pynodeta.models.TrajectoryNODE
        optim: OptimizerPreset | None = None,   # default TABNAdamW()
        tabn_reg_weight: float | None = None,   # λ of the TA-BN regulariser; None: the layers' own; 0: off
        loss: Literal["mse", "mae"] = "mse",    # the training objective
    ):
        super().__init__(model, optim, tabn_reg_weight)
        if loss not in ("mse", "mae"):
            raise ValueError(f"loss must be 'mse' or 'mae', got {loss!r}")
        self.loss_kind = loss

    def forward(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """y0: (batch, state_dim) at time 0, t: (n_times,) starting at 0 -> (n_times, batch, state_dim)."""
        return self.model(t[0], y0, t)

    def _loss_and_metrics(self, batch):
        t, y0, y_traj = batch
        prediction = self(y0, t - t[0])
        if prediction.shape != y_traj.shape:
            raise ValueError(
                f"the model returned {tuple(prediction.shape)} for trajectories {tuple(y_traj.shape)}; it must "
                f"return (n_times, batch, state_dim) for model(t0, y0, t)"
            )
        mse = F.mse_loss(prediction, y_traj)
        mae = F.l1_loss(prediction, y_traj)
        return (mse if self.loss_kind == "mse" else mae), {"mse": mse, "mae": mae}, y0.shape[0]
