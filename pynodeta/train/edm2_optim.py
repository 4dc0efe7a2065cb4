"""EDM2's optimiser preset: Adam (β = 0.9, 0.99), inverse-square-root decay after a reference step
and a linear warm-up (``pynodeta.diffusion.edm2.edm2_learning_rate``), no gradient clipping."""

from __future__ import annotations

import torch

from pynodeta.diffusion.edm2 import EDM2_ADAM_BETAS, edm2_learning_rate

from .optim import OptimizerPreset, _check_betas, _check_positive, trained_parameters

__all__ = ["EDM2Adam"]


class EDM2Adam(OptimizerPreset):
    """Adam over all trainable parameters of the LightningModule (network and uncertainty head).

    Paper presets (ImageNet-512, batch 2048): ref_lr 0.012 (XS) … 0.0065 (XXL), ref_steps 70 000,
    warm-up 10 M images ≈ 4900 steps; ImageNet-64: ref_steps 35 000.
    """

    def __init__(
        self,
        ref_lr: float = 0.01,                                 # α_ref: learning rate before the decay
        ref_steps: int = 70_000,                              # t_ref: the decay starts here (0: no decay)
        warmup_steps: int = 0,                                # linear warm-up (0: none)
        betas: tuple[float, float] = EDM2_ADAM_BETAS,
        max_norm: float | None = None,                        # EDM2 does not clip gradients
    ):
        _check_positive(ref_lr=ref_lr, max_norm=max_norm)
        if ref_steps < 0 or warmup_steps < 0:
            raise ValueError(f"ref_steps and warmup_steps must be >= 0, got {ref_steps} and {warmup_steps}")
        _check_betas(betas)
        self.ref_lr, self.ref_steps, self.warmup_steps = ref_lr, ref_steps, warmup_steps
        self.betas, self.max_norm = tuple(betas), max_norm

    def build(self, module) -> dict:
        parameters = trained_parameters(module)
        optimizer = torch.optim.Adam(parameters, lr=self.ref_lr, betas=self.betas)
        # LambdaLR's step counts finished optimiser steps from 0; the schedule is evaluated at step + 1.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: edm2_learning_rate(
            step + 1, 1.0, self.ref_steps, self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
