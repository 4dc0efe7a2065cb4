"""The times to audit a diffusion network at: over the range it is really used with.

A diffusion network's t is not an ODE time in [0, 1]: a DDPM network sees integer timesteps in
[0, T), an EDM network c_noise = ln(σ)/4 over the sampling range of σ. Auditing [0, 1] instead
compares almost identical noise levels (a DDPM U-Net's 0 and 1 are two adjacent timesteps).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["diffusion_times"]


def diffusion_times(module: nn.Module, network: nn.Module, points: int = 5) -> list[float] | None:
    """``points`` times over the range ``network`` is used with, or None when nothing says it.

    In order: the training module's objective (a ``DDPMObjective``'s schedule: timesteps 0 … T − 1; an EDM or
    EDM2 objective: c_noise = ln(σ)/4 at log-spaced σ over the module's ``sigma_range()``), else the
    network's declared ``time_range`` (``DDPMUNet``, ``EDM2UNet``).
    """
    from pynodeta.train.objectives import DDPMObjective, DiffusionObjective

    objective = getattr(module, "objective", None)
    if isinstance(objective, DDPMObjective):
        return _linspace(0.0, float(objective.schedule.num_timesteps - 1), points)
    if isinstance(objective, DiffusionObjective):
        sigma_min, sigma_max = module.sigma_range()
        return [ln_sigma / 4 for ln_sigma in _linspace(math.log(sigma_min), math.log(sigma_max), points)]
    declared = getattr(network, "time_range", None)
    if declared is not None:
        return _linspace(float(declared[0]), float(declared[1]), points)
    return None


def _linspace(low: float, high: float, points: int) -> list[float]:
    return torch.linspace(low, high, points, dtype=torch.float64).tolist()
