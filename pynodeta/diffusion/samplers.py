"""Noise-level samplers, k-diffusion style: ``sampler(denoiser, x, sigmas, ...) -> x0``.

``denoiser(x, sigma) -> x̂0`` takes ``x`` of any shape (batch, ...) and ``sigma`` of shape (batch,);
``x`` holds noise at ``sigmas[0]`` (e.g. ``randn * sigmas[0]``); ``sigmas`` decrease, usually to 0
(``karras_sigmas``). Each call publishes a ``SolveStats`` (method = the sampler's name,
backend = "sampler", nfe, n_steps, t_evaluated = the σ the denoiser saw), so
``with pynodeta.record_stats() as log: ...`` reports the NFE of samplers and ODE solves alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._random import randn
from ..ode.stats import SolveStats, _publish
from ._checks import Denoiser, check_option, check_sigmas, denoise

__all__ = ["sample_euler", "sample_heun", "sample_dpmpp_2m", "SAMPLERS", "get_sampler"]

Callback = Callable[[dict], None]


class _CountingDenoiser:
    """Wraps a denoiser: counts evaluations into a SolveStats and checks every output."""

    def __init__(self, denoiser: Denoiser, method: str, n_steps: int):
        self.denoiser = denoiser
        self.stats = SolveStats(method=method, backend="sampler", n_steps=n_steps, n_accepted=n_steps)
        _publish(self.stats)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.stats.nfe += 1
        self.stats.t_evaluated.append(sigma)
        return denoise(self.denoiser, x, sigma)


def _start(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, method: str):
    levels = check_sigmas(sigmas)
    if not torch.isfinite(x).all():
        raise ValueError("x (the initial noise) contains NaN/Inf; pass randn(...) * sigmas[0]")
    return levels, _CountingDenoiser(denoiser, method, len(levels) - 1)


def _churn(x: torch.Tensor, sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float,
           s_noise: float, generator: torch.Generator | None) -> tuple[torch.Tensor, float]:
    """EDM Algorithm 2, lines 4–6: raise the noise level to σ̂ = σ(1 + γ) by adding fresh noise."""
    gamma = min(s_churn / n_steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    noise = randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + noise * s_noise * math.sqrt(sigma_hat**2 - sigma**2), sigma_hat


def _check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    check_option("s_churn", s_churn, "0: deterministic")
    check_option("s_tmin", s_tmin, "the lowest noise level that gets churn")
    check_option("s_tmax", s_tmax, "the highest noise level that gets churn; inf: no bound", allow_inf=True)
    check_option("s_noise", s_noise, "1: fresh noise of the exact churned level")


def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler steps of the probability-flow ODE, with optional churn (EDM Algorithm 2 with first-order steps)."""
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    levels, model = _start(denoiser, x, sigmas, "euler")
    n_steps = len(levels) - 1
    for i in range(n_steps):
        x, sigma_hat = _churn(x, levels[i], n_steps, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = model(x, sigma_hat)
        # x + (σ_{i+1} − σ̂)·(x − D)/σ̂ = D + (σ_{i+1}/σ̂)(x − D): one fused lerp instead of four passes
        x = torch.lerp(denoised, x, levels[i + 1] / sigma_hat)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": levels[i], "sigma_hat": sigma_hat, "denoised": denoised})
    return x


def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Heun's second-order sampler, EDM Algorithm 1 (deterministic) and 2 (with churn, s_churn > 0)."""
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    levels, model = _start(denoiser, x, sigmas, "heun")
    n_steps = len(levels) - 1
    for i in range(n_steps):
        x, sigma_hat = _churn(x, levels[i], n_steps, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = model(x, sigma_hat)
        sigma_next, step = levels[i + 1], levels[i + 1] - sigma_hat
        slope = (x - denoised).div_(sigma_hat)  # in-place ops where a fresh tensor is already ours: fewer passes
        x_euler = torch.add(x, slope, alpha=step)
        if sigma_next > 0:  # trapezoidal correction with the slope at the Euler point
            slope_next = (x_euler - model(x_euler, sigma_next)).div_(sigma_next)
            x = torch.add(x, slope.add_(slope_next), alpha=step / 2)
        else:  # Algorithm 1, line 7: the last step to σ = 0 stays an Euler step
            x = x_euler
        if callback is not None:
            callback({"x": x, "i": i, "sigma": levels[i], "sigma_hat": sigma_hat, "denoised": denoised})
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2 (k-diffusion's ``sample_dpmpp_2m``)."""
    levels, model = _start(denoiser, x, sigmas, "dpmpp_2m")
    previous_denoised, previous_h = None, None
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:  # λ = −log σ reaches +∞: the update is exactly x̂0
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)  # λ_{i+1} − λ_i
            corrected = denoised
            if previous_denoised is not None:  # second-order multistep correction, r = h_{i−1}/h_i
                r = previous_h / h  # (1 + 1/(2r))·D_i − (1/(2r))·D_{i−1} as one lerp from D_{i−1}
                corrected = torch.lerp(previous_denoised, denoised, 1 + 1 / (2 * r))
            x = torch.add(x * (sigma_next / sigma), corrected, alpha=-math.expm1(-h))
            previous_h = h
        previous_denoised = denoised
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The noise-level sampler called ``name`` ("euler", "heun", "dpmpp_2m")."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)} "
                         "(or sample_ddpm / sample_ddim for ε-networks)")
    return SAMPLERS[name]
