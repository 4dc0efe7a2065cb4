"""Stochastic DPM-Solver++ samplers (k-diffusion's ``sample_dpmpp_sde``, ``_2m_sde``, ``_3m_sde``).

They solve the reverse SDE in λ = −log σ with exponential integrators; ``eta`` = 0 makes them
deterministic ODE solvers (DPM-Solver++(2S)/(2M)/(3M)), ``eta`` = 1 is the full SDE. Brownian increments
are drawn from ``generator``: ``dpmpp_sde`` through ``BrownianNoise`` (its two draws per step are on
nested intervals and must be correlated), the multistep ones as one standard normal per step (their
intervals do not overlap, so that is the same law as k-diffusion's Brownian tree). The last step to σ = 0
returns x̂0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ._checks import Denoiser
from ._progress import progress_range
from ._sampling import Callback, ancestral_step, check_ancestral, euler_to, fresh_noise, report, start
from .brownian import BrownianNoise

__all__ = ["sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "SDE_SOLVER_TYPES"]

SDE_SOLVER_TYPES = ("midpoint", "heun")


@torch.no_grad()
def sample_dpmpp_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: Mapping | None = None,
                     generator: torch.Generator | None = None, callback: Callback | None = None,
                     disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                     r: float = 0.5) -> torch.Tensor:
    """DPM-Solver++ (stochastic), two evaluations per step with the intermediate point at λ_i + r·h
    (k-diffusion's ``sample_dpmpp_sde``, SDE-DPM-Solver++(2S) of Lu et al. 2022)."""
    check_ancestral(eta, s_noise)
    if not 0 < r < 1:
        raise ValueError(f"r must lie in (0, 1) (where the intermediate point sits in λ; 1/2: midpoint), got {r!r}")
    levels, model = start(denoiser, x, sigmas, "dpmpp_sde", extra_args, generator)
    noise = BrownianNoise(x, generator)
    weight_second = 1 / (2 * r)
    for i in progress_range(len(levels) - 1, disable, "dpmpp_sde"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = euler_to(x, denoised, sigma, 0.0)
            continue
        h = math.log(sigma / sigma_next)
        sigma_s = sigma * math.exp(-r * h)
        # step 1: to σ_s, ancestral
        sigma_down, sigma_up = ancestral_step(sigma, sigma_s, eta)
        x_s = euler_to(x, denoised, sigma, sigma_down)
        if sigma_up > 0:
            x_s = x_s + noise(sigma, sigma_s) * (s_noise * sigma_up)
        denoised_s = model(x_s, sigma_s)
        # step 2: to σ_{i+1} with x̂0 extrapolated from D(σ_i) and D(σ_s)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = euler_to(x, torch.lerp(denoised, denoised_s, weight_second), sigma, sigma_down)
        if sigma_up > 0:
            x = x + noise(sigma, sigma_next) * (s_noise * sigma_up)
        noise.forget_above(sigma_next)
    return model.finish(x)


def _sde_decay(h: float, eta: float) -> tuple[float, float]:
    """(h_η, √(1 − e^{−2ηh})) of the multistep SDE solvers: the drift integrates over (1 + η)h, the noise
    has variance σ_{i+1}²(1 − e^{−2ηh})."""
    return (1 + eta) * h, math.sqrt(-math.expm1(-2 * eta * h))


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: Mapping | None = None, generator: torch.Generator | None = None,
                        callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE (k-diffusion's ``sample_dpmpp_2m_sde``); ``solver_type`` "midpoint" or "heun"
    picks the second-order correction (with η = 0 "midpoint" is exactly ``sample_dpmpp_2m``)."""
    check_ancestral(eta, s_noise)
    if solver_type not in SDE_SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {list(SDE_SOLVER_TYPES)}, got {solver_type!r}")
    levels, model = start(denoiser, x, sigmas, "dpmpp_2m_sde", extra_args, generator)
    previous_denoised, previous_h = None, None
    for i in progress_range(len(levels) - 1, disable, "dpmpp_2m_sde"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        h_eta, noise_scale = _sde_decay(h, eta)
        phi_1 = -math.expm1(-h_eta)  # 1 − e^{−h_η}
        # σ_{i+1}/σ_i·e^{−ηh} = e^{−h_η}; into a fresh tensor that the correction and the noise add into in place
        x = x.mul(math.exp(-h_eta)).add_(denoised, alpha=phi_1)
        if previous_denoised is not None:  # x += weight·(D_i − D_{i−1})
            r = previous_h / h
            if solver_type == "heun":
                weight = (phi_1 / -h_eta + 1) / r
            else:
                weight = 0.5 * phi_1 / r
            x.add_(denoised, alpha=weight).add_(previous_denoised, alpha=-weight)
        if eta > 0:
            x.add_(fresh_noise(x, generator), alpha=sigma_next * noise_scale * s_noise)
        previous_denoised, previous_h = denoised, h
    return model.finish(x)


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: Mapping | None = None, generator: torch.Generator | None = None,
                        callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion's ``sample_dpmpp_3m_sde``): third-order multistep corrections
    from the last three x̂0, lower orders for the first two steps."""
    check_ancestral(eta, s_noise)
    levels, model = start(denoiser, x, sigmas, "dpmpp_3m_sde", extra_args, generator)
    denoised_1 = denoised_2 = None  # x̂0 one and two steps back
    h_1 = h_2 = None
    for i in progress_range(len(levels) - 1, disable, "dpmpp_3m_sde"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        h_eta, noise_scale = _sde_decay(h, eta)
        # the first-order step into a fresh tensor; the corrections and the noise then add into it in place,
        # one fused multiply-add per tensor (the divided differences expanded into a weight per x̂0 on the host)
        x = x.mul(math.exp(-h_eta)).add_(denoised, alpha=-math.expm1(-h_eta))
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:
            # d1_0 = (D0 − D1)/r0 and d1_1 = (D1 − D2)/r1, the divided differences of x̂0 in λ scaled by h;
            # d1 = d1_0 + (d1_0 − d1_1)·r0/(r0 + r1), d2 = (d1_0 − d1_1)/(r0 + r1); x += φ₂·d1 − φ₃·d2
            r0, r1 = h_1 / h, h_2 / h
            phi_3 = phi_2 / h_eta - 0.5
            of_d1_0 = phi_2 * (1 + r0 / (r0 + r1)) - phi_3 / (r0 + r1)
            of_d1_1 = phi_3 / (r0 + r1) - phi_2 * r0 / (r0 + r1)
            x.add_(denoised, alpha=of_d1_0 / r0).add_(denoised_1, alpha=of_d1_1 / r1 - of_d1_0 / r0)
            x.add_(denoised_2, alpha=-of_d1_1 / r1)
        elif h_1 is not None:  # x += φ₂·(D0 − D1)/(h_1/h)
            weight = phi_2 * h / h_1
            x.add_(denoised, alpha=weight).add_(denoised_1, alpha=-weight)
        if eta > 0:
            x.add_(fresh_noise(x, generator), alpha=sigma_next * noise_scale * s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return model.finish(x)
