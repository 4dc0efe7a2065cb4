"""The optimiser of DDPM-family training: Adam with a linear warm-up, an optional cosine decay over the run,
and global gradient clipping."""

from __future__ import annotations

import math

import torch

from .optim import OptimizerPreset, _check_betas, _check_positive, trained_parameters
from .run_progress import RunProgress

__all__ = ["DiffusionAdam"]


class DiffusionAdam(OptimizerPreset):
    """Adam, learning rate warmed up linearly over ``warmup_steps`` optimiser steps, then constant
    (``decay="none"``) or half a cosine to zero at the end of the run (``decay="cosine"``).

    DDPM's CIFAR-10 setup: lr 2e-4, 5000 warm-up steps, constant, gradients clipped at norm 1 (Ho et al.
    2020, Appendix B); the adaptive-timestep-sampling paper keeps it. diffusers' unconditional training
    script decays with a cosine. Small data trains well at a larger lr with a short warm-up.

    The cosine runs over the run's progress: the larger of the fraction of its steps and, when the trainer
    has ``max_time``, of its wall-time budget (the step count of a run limited in minutes is not known ahead;
    such a schedule depends on the machine's speed, so two runs of one seed no longer take the same steps).
    """

    def __init__(
        self,
        lr: float = 2e-4,
        warmup_steps: int = 5000,           # optimiser steps of the linear warm-up (0: none)
        weight_decay: float = 0.0,          # decoupled (AdamW); 0 is plain Adam, as in DDPM
        betas: tuple[float, float] = (0.9, 0.999),
        max_norm: float | None = 1.0,       # global gradient-norm clip (None: off)
        decay: str = "none",                # "cosine": half a cosine to 0 over the run, after the warm-up
    ):
        _check_positive(lr=lr, max_norm=max_norm)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        _check_betas(betas)
        if decay not in ("none", "cosine"):
            raise ValueError(f"decay must be 'none' (constant after the warm-up) or 'cosine' (to 0 at the end of "
                             f"the run), got {decay!r}")
        self.lr, self.warmup_steps, self.weight_decay = lr, warmup_steps, weight_decay
        self.betas, self.max_norm, self.decay = tuple(betas), max_norm, decay

    def build(self, module) -> dict:
        parameters = trained_parameters(module)
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._factor(module))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _factor(self, module):
        """The learning-rate multiplier after ``step`` finished optimiser steps."""
        warmup = max(1, self.warmup_steps)
        if self.decay == "none":
            return lambda step: min(1.0, (step + 1) / warmup)
        # attached (the Lightning path): the run's limits are checked now; built by hand, the trainer is looked
        # up when the warm-up ends, so the warm-up steps can be taken without one
        progress = [self._progress(module)] if module._trainer is not None else []

        def factor(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / warmup
            if not progress:
                progress.append(self._progress(module))
            return 0.5 * (1.0 + math.cos(math.pi * progress[0](step)))

        return factor

    @staticmethod
    def _progress(module) -> RunProgress:
        if module._trainer is None:
            raise ValueError("DiffusionAdam(decay='cosine') decays over the run, so after its warm-up it needs the "
                             "module attached to a Trainer (build it from configure_optimizers), or use decay='none'")
        return RunProgress(module.trainer, "DiffusionAdam(decay='cosine')")
