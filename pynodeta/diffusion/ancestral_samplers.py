"""Ancestral samplers (k-diffusion's): each step goes deterministically down to σ_down, then adds fresh noise
of level σ_up, with σ_down² + σ_up² = σ_{i+1}² (``eta`` scales σ_up: 0 is deterministic, 1 is the DDPM
posterior's noise). Fresh noise is drawn from ``generator``; none is added on the last step to σ = 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ._checks import Denoiser
from ._progress import progress_range
from ._sampling import Callback, ancestral_step, check_ancestral, euler_to, fresh_noise, report, start

__all__ = ["sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral"]


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: Mapping | None = None, generator: torch.Generator | None = None,
                           callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling with Euler steps (k-diffusion's ``sample_euler_ancestral``; DDIM with this η)."""
    check_ancestral(eta, s_noise)
    levels, model = start(denoiser, x, sigmas, "euler_ancestral", extra_args, generator)
    for i in progress_range(len(levels) - 1, disable, "euler_ancestral"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = euler_to(x, denoised, sigma, sigma_down)
        if sigma_next > 0 and sigma_up > 0:
            x = x + fresh_noise(x, generator) * (s_noise * sigma_up)
    return model.finish(x)


@torch.no_grad()
def sample_dpm_2_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: Mapping | None = None, generator: torch.Generator | None = None,
                           callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver-2 midpoint steps (k-diffusion's ``sample_dpm_2_ancestral``)."""
    check_ancestral(eta, s_noise)
    levels, model = start(denoiser, x, sigmas, "dpm_2_ancestral", extra_args, generator)
    for i in progress_range(len(levels) - 1, disable, "dpm_2_ancestral"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = euler_to(x, denoised, sigma, 0.0)
        else:
            sigma_mid = math.sqrt(sigma * sigma_down)  # the midpoint in log σ
            x_mid = euler_to(x, denoised, sigma, sigma_mid)
            slope_mid = (x_mid - model(x_mid, sigma_mid)).div_(sigma_mid)
            x = torch.add(x, slope_mid, alpha=sigma_down - sigma)
        # k-diffusion adds no noise when η > 1 saturates σ_down at 0 before σ_{i+1} = 0; the noise is σ_up = σ_{i+1}
        if sigma_next > 0 and sigma_up > 0:
            x = x + fresh_noise(x, generator) * (s_noise * sigma_up)
    return model.finish(x)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                              extra_args: Mapping | None = None, generator: torch.Generator | None = None,
                              callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                              s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps, Lu et al. 2022 Algorithm 1 with r = 1/2
    (k-diffusion's ``sample_dpmpp_2s_ancestral``)."""
    check_ancestral(eta, s_noise)
    levels, model = start(denoiser, x, sigmas, "dpmpp_2s_ancestral", extra_args, generator)
    for i in progress_range(len(levels) - 1, disable, "dpmpp_2s_ancestral"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = euler_to(x, denoised, sigma, 0.0)
        else:
            sigma_mid = math.sqrt(sigma * sigma_down)  # λ_s = λ_i + h/2
            x_mid = euler_to(x, denoised, sigma, sigma_mid)  # DPM-Solver++(1) to the midpoint
            x = euler_to(x, model(x_mid, sigma_mid), sigma, sigma_down)  # the full step with x̂0 at the midpoint
        if sigma_next > 0 and sigma_up > 0:
            x = x + fresh_noise(x, generator) * (s_noise * sigma_up)
    return model.finish(x)
