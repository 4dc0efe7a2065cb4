"""Samplers that step the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (k-diffusion's, EDM's, DPM-Solver++'s).

All share k-diffusion's contract ``sampler(denoiser, x, sigmas, *, extra_args=None, generator=None,
callback=None, disable=None, **options) -> x0`` (see ``pynodeta.diffusion.samplers``). Euler, Heun and
DPM-Solver-2 take EDM's churn (``s_churn`` > 0 adds fresh noise, drawn from ``generator``); the others
are deterministic and ignore ``generator``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ._checks import Denoiser
from ._progress import progress_range
from ._sampling import Callback, check_churn, churn, euler_to, report, start

__all__ = ["sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m", "lms_coefficients"]


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: Mapping | None = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 disable: bool | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """Euler steps of the probability-flow ODE, with optional churn (EDM Algorithm 2 with first-order steps)."""
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    levels, model = start(denoiser, x, sigmas, "euler", extra_args, generator)
    n_steps = len(levels) - 1
    for i in progress_range(n_steps, disable, "euler"):
        x, sigma_hat = churn(x, levels[i], n_steps, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = model(x, sigma_hat)
        report(callback, x, i, levels[i], sigma_hat, denoised)
        x = euler_to(x, denoised, sigma_hat, levels[i + 1])
    return model.finish(x)


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: Mapping | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                disable: bool | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """Heun's second-order sampler, EDM Algorithm 1 (deterministic) and 2 (with churn, s_churn > 0)."""
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    levels, model = start(denoiser, x, sigmas, "heun", extra_args, generator)
    n_steps = len(levels) - 1
    for i in progress_range(n_steps, disable, "heun"):
        x, sigma_hat = churn(x, levels[i], n_steps, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = model(x, sigma_hat)
        report(callback, x, i, levels[i], sigma_hat, denoised)
        sigma_next, step = levels[i + 1], levels[i + 1] - sigma_hat
        slope = (x - denoised).div_(sigma_hat)  # in-place ops where a fresh tensor is already ours: fewer passes
        x_euler = torch.add(x, slope, alpha=step)
        if sigma_next > 0:  # trapezoidal correction with the slope at the Euler point
            slope_next = (x_euler - model(x_euler, sigma_next)).div_(sigma_next)
            x = torch.add(x, slope.add_(slope_next), alpha=step / 2)
        else:  # Algorithm 1, line 7: the last step to σ = 0 stays an Euler step
            x = x_euler
    return model.finish(x)


@torch.no_grad()
def sample_dpm_2(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: Mapping | None = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 disable: bool | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-2-inspired midpoint steps with EDM churn (k-diffusion's ``sample_dpm_2``): the slope is
    taken at the geometric mean of σ̂ and σ_{i+1}; the last step to σ = 0 is an Euler step."""
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    levels, model = start(denoiser, x, sigmas, "dpm_2", extra_args, generator)
    n_steps = len(levels) - 1
    for i in progress_range(n_steps, disable, "dpm_2"):
        x, sigma_hat = churn(x, levels[i], n_steps, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = model(x, sigma_hat)
        report(callback, x, i, levels[i], sigma_hat, denoised)
        sigma_next = levels[i + 1]
        if sigma_next == 0:
            x = euler_to(x, denoised, sigma_hat, sigma_next)
        else:
            sigma_mid = math.sqrt(sigma_hat * sigma_next)  # the midpoint in log σ
            x_mid = euler_to(x, denoised, sigma_hat, sigma_mid)
            slope_mid = (x_mid - model(x_mid, sigma_mid)).div_(sigma_mid)
            x = torch.add(x, slope_mid, alpha=sigma_next - sigma_hat)
    return model.finish(x)


def lms_coefficients(levels: list[float], i: int, order: int) -> list[float]:
    """Linear multistep weights of the step σ_i → σ_{i+1}: ∫ ℓ_j(σ) dσ over [σ_i, σ_{i+1}] for the Lagrange
    basis ℓ_j on σ_i, σ_{i−1}, …, σ_{i−order+1} (j = 0 is σ_i). Integrated exactly as polynomials
    (k-diffusion integrates them numerically, ``scipy.integrate.quad`` at relative tolerance 1e-4)."""
    if not 1 <= order <= i + 1:
        raise ValueError(f"order must be in [1, i + 1] = [1, {i + 1}] at step {i}, got {order}")
    # in u = (σ − σ_i)/(σ_{i+1} − σ_i) the step is [0, 1] and the nodes are O(1): a well-conditioned basis
    step = levels[i + 1] - levels[i]
    nodes = [(levels[i - k] - levels[i]) / step for k in range(order)]
    weights = []
    for j, node in enumerate(nodes):
        # ∏_{k≠j} (u − n_k) as coefficients, lowest degree first, in plain floats: a handful of terms, where
        # numpy's Polynomial took ~0.5 ms per step (half a width-8 digits network's evaluation)
        coefficients, scale = [1.0], 1.0
        for k, other in enumerate(nodes):
            if k != j:
                coefficients = [low - other * high for low, high in zip([0.0, *coefficients], [*coefficients, 0.0])]
                scale *= node - other
        weights.append(step * sum(c / (power + 1) for power, c in enumerate(coefficients)) / scale)
    return weights


@torch.no_grad()
def sample_lms(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: Mapping | None = None,
               generator: torch.Generator | None = None, callback: Callback | None = None,
               disable: bool | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams–Bashforth on the non-uniform σ grid) of order ``order``, k-diffusion's
    ``sample_lms``: one evaluation per step, lower orders for the first ``order − 1`` steps."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1 (k-diffusion uses 4), got {order!r}")
    levels, model = start(denoiser, x, sigmas, "lms", extra_args, generator)
    slopes: list[torch.Tensor] = []  # the newest last
    for i in progress_range(len(levels) - 1, disable, "lms"):
        denoised = model(x, levels[i])
        report(callback, x, i, levels[i], levels[i], denoised)
        slopes.append((x - denoised).div_(levels[i]))
        if len(slopes) > order:
            slopes.pop(0)
        weights = lms_coefficients(levels, i, len(slopes))
        # one fused multiply-add per slope, accumulated in place into the fresh tensor of the first
        x = torch.add(x, slopes[-1], alpha=weights[0])
        for weight, slope in zip(weights[1:], reversed(slopes[:-1])):
            x.add_(slope, alpha=weight)
    return model.finish(x)


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: Mapping | None = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2 (k-diffusion's ``sample_dpmpp_2m``)."""
    levels, model = start(denoiser, x, sigmas, "dpmpp_2m", extra_args, generator)
    previous_denoised, previous_h = None, None
    for i in progress_range(len(levels) - 1, disable, "dpmpp_2m"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = model(x, sigma)
        report(callback, x, i, sigma, sigma, denoised)
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
    return model.finish(x)
