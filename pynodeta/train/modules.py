"""Neural-ODE LightningModules: the family's base (NFE logging, the TA-BN regulariser), image
classification and trajectory regression."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pynodeta.nn import tabn_regularizer

from .base import TrainingModule
from .nfe import backward_nfe, forward_nfe, ode_solvers
from .optim import OptimizerPreset, TABNAdamW

__all__ = ["NODEModule", "NODEClassifier", "TrajectoryRegressor"]


class NODEModule(TrainingModule):
    """Base of the neural-ODE modules: holds the network in ``.model``; subclasses define
    ``_loss_and_metrics``, and ``model_inputs(batch)``: the positional inputs their steps pass to
    ``self.model`` (``pynodeta diagnose`` runs the network on a batch through it; without it, on the
    batch's first element).

    Logged per stage (``train``/``val``/``test``): ``{stage}/loss`` and the subclass's metrics,
    ``{stage}/nfe_forward`` (right-hand-side evaluations of all ODE blocks per batch, mean over the
    epoch) and in training ``train/nfe_backward`` (adjoint solve, read after backward) and
    ``train/tabn_reg`` (the regulariser term added to the loss).
    """

    summary_formats = {
        "test/acc": "test accuracy {:.4f}",
        "test/loss": "test loss {:.4f}",
        "test/nfe_forward": "test forward NFE {:.1f}",
        "train/nfe_forward": "train forward NFE {:.1f}",
        "train/nfe_backward": "train backward NFE {:.1f}",
    }

    def __init__(
        self,
        model: nn.Module,                       # the network; its ODE blocks expose `last_stats`
        optim: OptimizerPreset | None = None,   # optimiser, schedule and clipping (default TABNAdamW())
        tabn_reg_weight: float | None = None,   # λ of the TA-BN regulariser; None: the layers' own (0.1); 0: off
    ):
        super().__init__(optim)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if tabn_reg_weight is not None and tabn_reg_weight < 0:
            raise ValueError(
                f"tabn_reg_weight must be >= 0 (0 disables the regulariser) or None, got {tabn_reg_weight}")
        self.model = model
        self.tabn_reg_weight = tabn_reg_weight
        self._blocks = ode_solvers(model)
        self._last_batch_size = 1

    def default_optim(self) -> OptimizerPreset:
        return TABNAdamW()

    # --- subclass interface -----------------------------------------------------------------------
    def _loss_and_metrics(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(loss, {metric name: value}, batch size) for one batch."""
        raise NotImplementedError

    # --- steps ----------------------------------------------------------------------------------------
    def _step(self, batch, stage: str) -> torch.Tensor:
        loss, metrics, batch_size = self._loss_and_metrics(batch)
        self._last_batch_size = batch_size
        nfe = float(forward_nfe(self._blocks))  # read now: the next solve overwrites last_stats
        self.log_stage(stage, loss, {**metrics, "nfe_forward": nfe}, batch_size, prog_bar=("acc",))
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        reg = tabn_regularizer(self.model, self.tabn_reg_weight).to(loss.device)
        self.log("train/tabn_reg", reg, on_step=False, on_epoch=True, batch_size=self._last_batch_size,
                 sync_dist=True)
        return loss + reg

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_after_backward(self) -> None:
        # The adjoint fills nfe_adjoint into the forward solve's stats during backward.
        if self._blocks:
            self.log("train/nfe_backward", float(backward_nfe(self._blocks)), on_step=False, on_epoch=True,
                     batch_size=self._last_batch_size, sync_dist=True)


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

    def model_inputs(self, batch) -> tuple[torch.Tensor]:
        x, _ = batch
        return (x,)

    def _loss_and_metrics(self, batch):
        _, y = batch
        logits = self.model(*self.model_inputs(batch))
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

    def model_inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(t0, y0, t)`` of a ``(t, y0, y_traj)`` batch, the clock shifted to start at 0 (see the class)."""
        t, y0, _ = batch
        t = t - t[0]
        return t[0], y0, t

    def _loss_and_metrics(self, batch):
        _, y0, y_traj = batch
        prediction = self.model(*self.model_inputs(batch))
        if prediction.shape != y_traj.shape:
            raise ValueError(
                f"the model returned {tuple(prediction.shape)} for trajectories {tuple(y_traj.shape)}; it must "
                f"return (n_times, batch, state_dim) for model(t0, y0, t)"
            )
        mse = F.mse_loss(prediction, y_traj)
        mae = F.l1_loss(prediction, y_traj)
        return (mse if self.loss_kind == "mse" else mae), {"mse": mse, "mae": mae}, y0.shape[0]
