"""What every noise-level sampler shares: the counting denoiser, input checks, churn and ancestral steps."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from .._random import check_generator, randn
from ..ode.stats import SolveStats, _publish
from ._checks import Denoiser, call_denoiser, check_extra_args, check_option, check_sigmas, nonfinite_denoiser_message
from ._output_checks import OutputChecks

Callback = Callable[[dict], None]


class CountingDenoiser:
    """Wraps a denoiser: forwards ``extra_args``, counts evaluations into a published SolveStats and
    checks every output (shape at once; NaN/Inf through ``OutputChecks``, so a sampler ends with
    ``return model.finish(x)``)."""

    def __init__(self, denoiser: Denoiser, method: str, n_steps: int, extra_args: Mapping | None = None):
        self.denoiser, self.extra_args = denoiser, check_extra_args(extra_args)
        self.stats = SolveStats(method=method, backend="sampler", n_steps=n_steps, n_accepted=n_steps)
        self.outputs = OutputChecks(nonfinite_denoiser_message)
        _publish(self.stats)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.stats.nfe += 1
        self.stats.t_evaluated.append(sigma)
        out = call_denoiser(self.denoiser, x, sigma, self.extra_args)
        self.outputs.check(out, sigma)
        return out

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The sampler's result ``x``, once every output of the run has been checked."""
        self.outputs.raise_if_any()
        return x


def start(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, method: str, extra_args: Mapping | None,
          generator: torch.Generator | None) -> tuple[list[float], CountingDenoiser]:
    """Check the noise levels, the initial noise and the generator (before the first denoiser call, also in
    samplers that draw no noise); the levels as floats and the counting denoiser."""
    check_generator(generator)
    levels = check_sigmas(sigmas)
    if not torch.isfinite(x).all():
        raise ValueError("x (the initial noise) contains NaN/Inf; pass randn(...) * sigmas[0]")
    return levels, CountingDenoiser(denoiser, method, len(levels) - 1, extra_args)


def report(callback: Callback | None, x: torch.Tensor, i: int, sigma: float, sigma_hat: float,
           denoised: torch.Tensor) -> None:
    """k-diffusion's callback dict."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def fresh_noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def churn(x: torch.Tensor, sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float,
          s_noise: float, generator: torch.Generator | None) -> tuple[torch.Tensor, float]:
    """EDM Algorithm 2, lines 4–6: raise the noise level to σ̂ = σ(1 + γ) by adding fresh noise."""
    gamma = min(s_churn / n_steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + fresh_noise(x, generator) * s_noise * math.sqrt(sigma_hat**2 - sigma**2), sigma_hat


def check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    check_option("s_churn", s_churn, "0: deterministic")
    check_option("s_tmin", s_tmin, "the lowest noise level that gets churn")
    check_option("s_tmax", s_tmax, "the highest noise level that gets churn; inf: no bound", allow_inf=True)
    check_option("s_noise", s_noise, "1: fresh noise of the exact churned level")


def check_ancestral(eta: float, s_noise: float) -> None:
    check_option("eta", eta, "0: deterministic, 1: the full ancestral noise")
    check_option("s_noise", s_noise, "1: fresh noise of the exact ancestral level")


def ancestral_step(sigma_from: float, sigma_to: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up) of k-diffusion's ``get_ancestral_step``: step deterministically down to σ_down, then add
    noise σ_up, with σ_down² + σ_up² = σ_to². η = 1 is the DDPM posterior's noise (DDIM Eq. 16 in σ);
    σ_up is capped at σ_to, so η > 1 saturates at σ_down = 0 (k-diffusion's ``min``)."""
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0)), sigma_up


def euler_to(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_to: float) -> torch.Tensor:
    """x + (σ_to − σ)·(x − D)/σ, an Euler step of dx/dσ = (x − D)/σ, as one fused lerp D + (σ_to/σ)(x − D).

    It is also DPM-Solver++(1), (σ_to/σ)·x − expm1(−h)·D with h = log(σ/σ_to): in the VE view the
    exponential integrator in λ = −log σ and the Euler step in σ coincide for a frozen x̂0."""
    return torch.lerp(denoised, x, sigma_to / sigma)
