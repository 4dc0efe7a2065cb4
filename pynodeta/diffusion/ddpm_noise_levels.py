"""DDPM and DDIM as noise-level samplers (k-diffusion's contract), and the σ grid of a DDPM schedule.

With ``denoiser = DenoiserFromEpsilon(eps_model, schedule)``, ``sigmas = ddpm_sigmas(schedule, n, spacing)``
and ``x = x_T·√(1 + σ_max²)`` (the VP noise x_T seen as a VE state), ``sample_ddim_noise_levels`` and
``sample_ddpm_noise_levels`` give ``sample_ddim``'s and ``sample_ddpm``'s samples up to round-off, same
generator included. The math, in σ: a VP state x_t is the VE state x = x_t/√ᾱ_t at σ = √((1 − ᾱ)/ᾱ),
and with D = x̂0 and ε̂ = (x − D)/σ a DDIM step σ → σ' (Eq. 12 with Eq. 16's noise) is

    x' = x̂0 + √(σ'² − σ_up²)·ε̂ + σ_up·z,   σ_up = η·σ'·√(σ² − σ'²)/σ,

k-diffusion's ancestral step (``euler_ancestral`` is DDIM for η <= 1). DDPM's posterior q(x_{t−1} | x_t, x̂0)
is the η = 1 step on consecutive timesteps; its "fixed_large" variance β_t is σ_up² =
(σ² − σ'²)(1 + σ'²)/(1 + σ²) with the same mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ._checks import Denoiser, check_option
from ._progress import progress_range
from ._sampling import Callback, euler_to, fresh_noise, report, start
from .ddpm_samplers import ddim_timesteps
from .schedules import VARIANCES, DDPMSchedule

__all__ = ["ddpm_sigmas", "sample_ddim_noise_levels", "sample_ddpm_noise_levels"]


def ddpm_sigmas(schedule: DDPMSchedule, num_steps: int | None = None, spacing: str = "linspace",
                steps_offset: int = 0, *, dtype: torch.dtype = torch.float64,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The σ_t of ``ddim_timesteps(T, num_steps, spacing, steps_offset)`` (all T timesteps for None), then 0.

    σ_t = √((1 − ᾱ_t)/ᾱ_t), decreasing, shape (num_steps + 1,); float64 by default, the schedule's own values.
    """
    if not isinstance(schedule, DDPMSchedule):
        raise TypeError(f"schedule must be a DDPMSchedule, got {type(schedule).__name__}")
    if num_steps is None:
        num_steps = schedule.num_timesteps
    timesteps = ddim_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
    sigmas = schedule.sigmas[timesteps]
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype=dtype, device=device)


def _check_clip(clip_x0: bool) -> bool:
    if not isinstance(clip_x0, bool):
        raise TypeError(f"clip_x0 must be True or False (clip x̂0 to [-1, 1]), got {clip_x0!r}")
    return clip_x0


@torch.no_grad()
def sample_ddim_noise_levels(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                             extra_args: Mapping | None = None, generator: torch.Generator | None = None,
                             callback: Callback | None = None, disable: bool | None = None, eta: float = 0.0,
                             clip_x0: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021, Eqs. 12 and 16) in σ. Unlike k-diffusion's ancestral samplers, η > 1 is not
    capped: σ_up may exceed σ' and the direction term then vanishes, as in ``sample_ddim``. ``clip_x0``
    clips x̂0 to [-1, 1] and keeps ε̂ from the unclipped one (diffusers' ``clip_sample``)."""
    eta = check_option("eta", eta, "0: deterministic DDIM, 1: DDPM-like")
    _check_clip(clip_x0)
    levels, model = start(denoiser, x, sigmas, "ddim", extra_args, generator)
    for i in progress_range(len(levels) - 1, disable, "ddim"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
        sigma_up = eta * sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma
        sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
        if clip_x0:
            x = torch.add(denoised.clamp(-1, 1), x - denoised, alpha=sigma_down / sigma)
        else:
            x = euler_to(x, denoised, sigma, sigma_down)
        if sigma_up > 0:
            x = x + fresh_noise(x, generator) * sigma_up
    return model.finish(x)


@torch.no_grad()
def sample_ddpm_noise_levels(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                             extra_args: Mapping | None = None, generator: torch.Generator | None = None,
                             callback: Callback | None = None, disable: bool | None = None,
                             variance: str = "fixed_small", clip_x0: bool = False) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) in σ: the posterior q(x_{σ'} | x_σ, x̂0) of the
    discrete schedule, variance β̃ ("fixed_small") or β ("fixed_large") between consecutive levels; the last
    step to σ = 0 returns x̂0. ``clip_x0`` clips x̂0 to [-1, 1] before the posterior mean (DDPM's clipping)."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {list(VARIANCES)}")
    _check_clip(clip_x0)
    levels, model = start(denoiser, x, sigmas, "ddpm", extra_args, generator)
    for i in progress_range(len(levels) - 1, disable, "ddpm"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
        x0 = denoised.clamp(-1, 1) if clip_x0 else denoised
        x = euler_to(x, x0, sigma, sigma_next**2 / sigma)  # the posterior mean: σ_down = σ'²/σ at η = 1
        if sigma_next > 0:
            if variance == "fixed_small":
                sigma_up = sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma
            else:
                sigma_up = math.sqrt((sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2))
            x = x + fresh_noise(x, generator) * sigma_up
    return model.finish(x)
