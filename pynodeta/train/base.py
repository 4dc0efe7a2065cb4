"""What every pynodeta LightningModule shares: NFE logging, the TA-BN regulariser, the optimiser
preset with its clipping, and exact resume (global RNG states in the checkpoint)."""

from __future__ import annotations

import lightning
import torch
from torch import nn

from .nfe import backward_nfe, forward_nfe, ode_solvers
from .optim import OptimizerPreset, TABNAdamW
from .regularizers import tabn_penalty
from .rng import collect_rng_states, restore_rng_states

__all__ = ["NODEModule"]


class NODEModule(lightning.LightningModule):
    """Base class: holds the network in ``.model``; subclasses define ``_loss_and_metrics``.

    Logged per stage (``train``/``val``/``test``): ``{stage}/loss`` and the subclass's metrics,
    ``{stage}/nfe_forward`` (right-hand-side evaluations of all ODE blocks per batch, mean over the
    epoch) and in training ``train/nfe_backward`` (adjoint solve, read after backward) and
    ``train/tabn_reg`` (the regulariser term added to the loss).
    """

    def __init__(
        self,
        model: nn.Module,                       # the network; its ODE blocks expose `last_stats`
        optim: OptimizerPreset | None = None,   # optimiser, schedule and clipping (default TABNAdamW())
        tabn_reg_weight: float | None = None,   # λ of the TA-BN regulariser; None: the layers' own (0.1); 0: off
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if tabn_reg_weight is not None and tabn_reg_weight < 0:
            raise ValueError(
                f"tabn_reg_weight must be >= 0 (0 disables the regulariser) or None, got {tabn_reg_weight}")
        self.model = model
        self.optim = optim if optim is not None else TABNAdamW()
        self.tabn_reg_weight = tabn_reg_weight
        self._blocks = ode_solvers(model)
        self._last_batch_size = 1

    # --- subclass interface -----------------------------------------------------------------------
    def _loss_and_metrics(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(loss, {metric name: value}, batch size) for one batch."""
        raise NotImplementedError

    # --- steps ----------------------------------------------------------------------------------------
    def _step(self, batch, stage: str) -> torch.Tensor:
        loss, metrics, batch_size = self._loss_and_metrics(batch)
        self._last_batch_size = batch_size
        nfe = float(forward_nfe(self._blocks))  # read now: the next solve overwrites last_stats
        # epoch means only; under DDP they are averaged over ranks once per epoch (sync_dist)
        log = dict(on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", **log)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "acc", **log)
        self.log(f"{stage}/nfe_forward", nfe, **log)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        reg = tabn_penalty(self.model, self.tabn_reg_weight).to(loss.device)
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

    # --- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        return self.optim.build(self)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's own clipping (trainer.gradient_clip_val) first, then the preset's: the TA-BN
        # setup clips the γ/β group separately, which one global norm cannot express.
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.optim.clip(self.model)

    # --- exact resume ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pynodeta_rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "pynodeta_rng_states" in checkpoint:
            restore_rng_states(checkpoint["pynodeta_rng_states"])
