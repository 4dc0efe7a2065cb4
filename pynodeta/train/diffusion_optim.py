"""The optimiser of DDPM-family training: Adam with a linear warm-up and global gradient clipping."""

from __future__ import annotations

import torch

from .optim import OptimizerPreset, _check_betas, _check_positive, trained_parameters

__all__ = ["DiffusionAdam"]


class DiffusionAdam(OptimizerPreset):
    """Adam, learning rate warmed up linearly over ``warmup_steps`` optimiser steps, then constant.

    DDPM's CIFAR-10 setup: lr 2e-4, 5000 warm-up steps, gradients clipped at norm 1 (Ho et al. 2020,
    Appendix B); the adaptive-timestep-sampling paper keeps it. Small data trains well at a larger lr
    with a short warm-up.
    """

    def __init__(
        self,
        lr: float = 2e-4,
        warmup_steps: int = 5000,           # optimiser steps of the linear warm-up (0: none)
        weight_decay: float = 0.0,          # decoupled (AdamW); 0 is plain Adam, as in DDPM
        betas: tuple[float, float] = (0.9, 0.999),
        max_norm: float | None = 1.0,       # global gradient-norm clip (None: off)
    ):
        _check_positive(lr=lr, max_norm=max_norm)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        _check_betas(betas)
        self.lr, self.warmup_steps, self.weight_decay = lr, warmup_steps, weight_decay
        self.betas, self.max_norm = tuple(betas), max_norm

    def build(self, module) -> dict:
        parameters = trained_parameters(module)
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        warmup = max(1, self.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
