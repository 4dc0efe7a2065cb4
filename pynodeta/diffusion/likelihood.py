"""Log-likelihood through the probability-flow ODE (Song et al. 2021, Appendix D.2; score-SDE ``likelihood.py``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._random import check_generator
from ..ode.settings import SolverSettings
from ..ode.solve import solve
from ._checks import (
    Denoiser,
    call_denoiser,
    check_within_denoiser_range,
    default_sigma_range,
    nonfinite_denoiser_message,
)
from ._output_checks import OutputChecks
from .flow_solver import check_finite_x, class_label_arguments, flow_solver, staying_inside_the_span
from .probability_flow import check_sigma_range

__all__ = ["log_likelihood", "bits_per_dim", "dequantize", "DIVERGENCES"]

DIVERGENCES = ("hutchinson", "exact")


def _exact_divergence(drift: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Tr(∂drift/∂x) per sample: one vector-Jacobian product per dimension, for the whole batch at once."""
    flat_drift = drift.reshape(x.shape[0], -1)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for j in range(flat_drift.shape[1]):
        (row,) = torch.autograd.grad(flat_drift[:, j].sum(), x, retain_graph=True)
        total = total + row.reshape(x.shape[0], -1)[:, j]
    return total


def _hutchinson_divergence(drift: torch.Tensor, x: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """εᵀ(∂drift/∂x)ε per sample (Hutchinson 1989): unbiased for E[εεᵀ] = I."""
    (vjp,) = torch.autograd.grad(drift, x, probe)
    return (vjp * probe).reshape(x.shape[0], -1).sum(dim=1)


def log_likelihood(denoiser: Denoiser, x: torch.Tensor, sigma_min: float | None = None, sigma_max: float | None = None,
                   *, solver: SolverSettings | None = None, class_labels: torch.Tensor | None = None,
                   divergence: str = "hutchinson", generator: torch.Generator | None = None,
                   **solve_arguments: Any) -> torch.Tensor:
    """log p(x) in nats for each sample, shape (batch,), of the model's density at noise level ``sigma_min``.

    Integrates [x, ℓ] from σ_min to σ_max with dx/dσ = (x − D)/σ and dℓ/dσ = ∇·((x − D)/σ), then
    log p_{σ_min}(x) = log N(x(σ_max); 0, σ_max² I) + ℓ(σ_max). ``divergence="exact"`` takes one
    vector-Jacobian product per dimension (cost ∝ dimension); ``"hutchinson"`` one per evaluation with a
    Rademacher probe per sample, fixed for the whole solve (an unbiased estimate of log p). The denoiser
    must treat samples independently (no batch statistics). Not differentiable; NFE via ``record_stats``.

    ``sigma_min``/``sigma_max`` default to the noise levels the denoiser declares (its ``sigma_min`` and
    ``sigma_max`` attributes: a ``DenoiserFromEpsilon`` its schedule's σ_0 and σ_{T−1}), and to EDM's
    0.002 and 80 where it declares no finite one (``EDMPrecond``, plain functions). A level outside the
    declared range is refused, not clamped, and no solver evaluation leaves [sigma_min, sigma_max].

    ``solver`` (default ``FLOW_SOLVER``: dopri5, ``IController(rtol=1e-5, atol=1e-5)``), ``class_labels``
    (one-hot ``(batch, num_classes)``, passed to every denoiser call, the divergence's included) and
    ``solve_arguments`` (``solve``'s keyword arguments instead of ``solver``) as in ``probability_flow``.
    """
    default_min, default_max = default_sigma_range(denoiser)
    sigma_min = default_min if sigma_min is None else sigma_min
    sigma_max = default_max if sigma_max is None else sigma_max
    check_sigma_range(sigma_min, sigma_max, "sigma_min", "sigma_max")
    check_within_denoiser_range(denoiser, {"sigma_min": sigma_min, "sigma_max": sigma_max},
                                " (or leave it out: the default is that range)")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}")
    check_generator(generator)
    check_finite_x(x, "the data to score", "pass finite data in the model's scale (integer pixels: "
                   "dequantize(x, num_bins), or bits_per_dim)")
    extra_args = class_label_arguments(class_labels, x)
    solver = flow_solver("log_likelihood", solver, solve_arguments)
    probe = None
    if divergence == "hutchinson":
        signs = torch.randint(0, 2, x.shape, generator=generator, device=generator.device if generator else None)
        probe = (2 * signs - 1).to(dtype=x.dtype, device=x.device)

    outputs = OutputChecks(nonfinite_denoiser_message)

    def augmented(sigma: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            denoised = call_denoiser(denoiser, y, sigma, extra_args)
            outputs.check(denoised, sigma)
            drift = (y - denoised) / sigma
            div = _exact_divergence(drift, y) if probe is None else _hutchinson_divergence(drift, y, probe)
        return drift.detach(), div.detach()

    start = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    times = torch.tensor([sigma_min, sigma_max], dtype=x.dtype, device=x.device)
    with torch.no_grad(), outputs.around_solve():
        solution = solve(augmented, start, times, **staying_inside_the_span(times, solver))
    x_end, delta_log_p = solution.ys[0][-1], solution.ys[1][-1]
    dim = x[0].numel()
    prior = -0.5 * (x_end.reshape(x.shape[0], -1) ** 2).sum(dim=1) / sigma_max**2 \
        - 0.5 * dim * math.log(2 * math.pi * sigma_max**2)
    return prior + delta_log_p


def dequantize(x: torch.Tensor, num_bins: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer data in {0, …, K − 1} → y = 2(x + u)/K − 1 ∈ [−1, 1], u ~ U(0, 1) per entry (K = num_bins)."""
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2 (K, the number of values; digits: 17), got {num_bins!r}")
    check_generator(generator)
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); pass at least one integer value to dequantize")
    values = x.to(torch.float64)
    if (values != values.round()).any() or values.min() < 0 or values.max() > num_bins - 1:
        raise ValueError(f"x must hold integers in {{0, …, {num_bins - 1}}} (raw pixel values, not normalised); "
                         f"got values in [{float(values.min())}, {float(values.max())}]")
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float64,
                       device=generator.device if generator else None).to(x.device)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return (2 * (values + noise) / num_bins - 1).to(dtype)


def bits_per_dim(denoiser: Denoiser, x: torch.Tensor, num_bins: int, generator: torch.Generator | None = None,
                 **likelihood_options: Any) -> torch.Tensor:
    """Negative log-likelihood in bits per dimension of integer data x ∈ {0, …, K − 1}, shape (batch,).

    Uniform dequantisation u = x + U(0, 1) and scaling y = 2u/K − 1 ∈ [−1, 1] (the model must have
    been trained on data in that scale); the Jacobian of the scaling is (2/K)^D, so
    bpd = −(log p(y) + D·log(2/K))/(D·ln 2), an upper bound on the discrete data's bits/dim
    (K = 256 for 8-bit images, 17 for the 8×8 digits). ``likelihood_options`` go to ``log_likelihood``
    (``solver``, ``class_labels``, ``divergence``, ...); ``generator`` draws both the dequantisation noise
    and the Hutchinson probes.
    """
    y = dequantize(x, num_bins, generator)
    log_p = log_likelihood(denoiser, y, generator=generator, **likelihood_options)
    dim = x[0].numel()
    return -(log_p + dim * math.log(2 / num_bins)) / (dim * math.log(2))
