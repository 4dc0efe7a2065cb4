"""DPM-Solver-12 and -23 with adaptive steps in λ = −log σ (Lu et al. 2022, Sec. 4.1; k-diffusion's
``sample_dpm_adaptive``).

Why not through ``pynodeta.solve``: an embedded pair there is a Butcher tableau with constant
coefficients, while DPM-Solver's weights are φ-functions of the step, e^{h} − 1 and (e^{h} − 1)/h − 1,
integrated exactly against σ(λ) = e^{−λ}; and k-diffusion's acceptance test (a PID factor against
``accept_safety``, the error scaled by max(|x_low|, |x_prev|)) is not one of ``solve``'s controllers. The
steps and the controller below are k-diffusion's, so its ``rtol``/``atol``/``h_init``/PID defaults mean
the same here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .._random import check_generator
from ._checks import Denoiser, check_option, check_sigmas
from ._progress import ProgressCounter
from ._sampling import Callback, CountingDenoiser, ancestral_step, check_ancestral, fresh_noise

__all__ = ["sample_dpm_adaptive"]


class PIDStepSizeController:
    """k-diffusion's PID step-size controller on 1/error (Söderlind's digital filter, arctan limiter)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8):
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.inverse_errors: list[float] = []

    def propose_step(self, error: float) -> bool:
        """Scale h by the filtered factor; True when the step that gave ``error`` is accepted."""
        inverse_error = 1 / (error + self.eps)
        if not self.inverse_errors:
            self.inverse_errors = [inverse_error] * 3
        self.inverse_errors[0] = inverse_error
        e0, e1, e2 = self.inverse_errors
        factor = 1 + math.atan(e0**self.b1 * e1**self.b2 * e2**self.b3 - 1)  # in (1 − π/4, 1 + π/2)
        accept = factor >= self.accept_safety
        if accept:
            self.inverse_errors[2], self.inverse_errors[1] = e1, e0
        self.h *= factor
        return accept


class _DPMSolver:
    """DPM-Solver steps in the noise prediction ε = (x − D)/σ, in λ = −log σ (k-diffusion's ``DPMSolver``)."""

    def __init__(self, model: CountingDenoiser, progress: ProgressCounter):
        self.model, self.progress = model, progress

    def eps(self, x: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = math.exp(-lam)
        denoised = self.model(x, sigma)
        self.progress.update()
        return (x - denoised) / sigma, denoised

    @staticmethod
    def first_order(x, eps, lam, lam_next):
        return x - math.exp(-lam_next) * math.expm1(lam_next - lam) * eps

    def second_order(self, x, eps, lam, lam_next, r1):
        h = lam_next - lam
        s1 = lam + r1 * h
        u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
        eps_r1, _ = self.eps(u1, s1)
        sigma_next = math.exp(-lam_next)
        return x - sigma_next * math.expm1(h) * eps - sigma_next / (2 * r1) * math.expm1(h) * (eps_r1 - eps), eps_r1

    def third_order(self, x, eps, lam, lam_next, eps_r1, r1=1 / 3, r2=2 / 3):
        """DPM-Solver-3; reuses ε at λ + h/3 from the second-order step with r1 = 1/3 (k-diffusion's cache)."""
        h = lam_next - lam
        s2 = lam + r2 * h
        u2 = (x - math.exp(-s2) * math.expm1(r2 * h) * eps
              - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2, _ = self.eps(u2, s2)
        sigma_next = math.exp(-lam_next)
        return x - sigma_next * math.expm1(h) * eps - sigma_next / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)


def _check_controller(order: int, rtol: float, atol: float, h_init: float, pcoeff: float, icoeff: float,
                      dcoeff: float, accept_safety: float) -> None:
    if order not in (2, 3):
        raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}")
    for name, value, hint in (("rtol", rtol, "relative tolerance"), ("atol", atol, "absolute tolerance"),
                              ("pcoeff", pcoeff, "PID proportional gain"), ("icoeff", icoeff, "integral gain"),
                              ("dcoeff", dcoeff, "derivative gain")):
        check_option(name, value, hint)
    if not rtol > 0 and not atol > 0:
        raise ValueError("rtol and atol cannot both be 0: the error would be divided by 0")
    if not check_option("h_init", h_init, "the first step in λ = −log σ") > 0:
        raise ValueError(f"h_init must be > 0 (the first step in λ = −log σ), got {h_init!r}")
    if not 0 < check_option("accept_safety", accept_safety, "k-diffusion uses 0.81") <= 1:
        raise ValueError(f"accept_safety must lie in (0, 1] (k-diffusion uses 0.81), got {accept_safety!r}")


@torch.no_grad()
def sample_dpm_adaptive(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: Mapping | None = None, generator: torch.Generator | None = None,
                        callback: Callback | None = None, disable: bool | None = None, order: int = 3,
                        rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
                        icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0,
                        s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-12 (``order=2``) or -23 (``order=3``) with adaptive steps, k-diffusion's ``sample_dpm_adaptive``.

    Only the ends of ``sigmas`` are used: it solves from σ_max = sigmas[0] to σ_min = the smallest
    positive level, in steps chosen by the error of the embedded lower-order solution; when ``sigmas``
    ends at 0 one more evaluation returns x̂0 = D(x, σ_min) (k-diffusion's returns x at σ_min). ``atol``
    and ``rtol`` are in the data's units (the defaults, 0.0078 ≈ 1/128, suit images in [-1, 1]); ``h_init``
    is the first step in λ; ``eta`` > 0 adds ancestral noise. The published SolveStats counts attempted,
    accepted and rejected steps; its ``step_sizes`` are the accepted steps in λ.
    """
    _check_controller(order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety)
    check_ancestral(eta, s_noise)
    check_generator(generator)
    levels = check_sigmas(sigmas)
    positive = [level for level in levels if level > 0]
    if len(positive) < 2:
        raise ValueError(f"sigmas must hold two positive noise levels (σ_max and σ_min), got {levels}")
    if not torch.isfinite(x).all():
        raise ValueError("x (the initial noise) contains NaN/Inf; pass randn(...) * sigmas[0]")
    model = CountingDenoiser(denoiser, "dpm_adaptive", 0, extra_args)
    stats = model.stats
    stats.n_accepted = 0
    progress = ProgressCounter(disable, "dpm_adaptive")
    solver = _DPMSolver(model, progress)
    lam, lam_end = -math.log(positive[0]), -math.log(positive[-1])
    pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_previous = x
    try:
        while lam < lam_end - 1e-5:
            lam_next = min(lam_end, lam + pid.h)
            if eta:  # step deterministically to σ_down, then add noise up to σ(λ_next)
                sigma_down, _ = ancestral_step(math.exp(-lam), math.exp(-lam_next), eta)
                lam_target = min(lam_end, -math.log(sigma_down)) if sigma_down > 0 else lam_end
                sigma_up = math.sqrt(max(math.exp(-2 * lam_next) - math.exp(-2 * lam_target), 0.0))
            else:
                lam_target, sigma_up = lam_next, 0.0
            x_start, sigma_start = x, math.exp(-lam)
            eps, denoised = solver.eps(x, lam)
            if order == 2:
                x_low = solver.first_order(x, eps, lam, lam_target)
                x_high, _ = solver.second_order(x, eps, lam, lam_target, r1=1 / 2)
            else:
                x_low, eps_r1 = solver.second_order(x, eps, lam, lam_target, r1=1 / 3)
                x_high = solver.third_order(x, eps, lam, lam_target, eps_r1)
            scale = torch.clamp(torch.maximum(x_low.abs(), x_previous.abs()) * rtol, min=atol)
            error = float(torch.linalg.vector_norm((x_low - x_high) / scale)) / math.sqrt(x.numel())
            if not math.isfinite(error):  # a NaN output would leave the controller rejecting forever: name it now
                model.outputs.raise_if_any()
            accept = pid.propose_step(error)
            stats.n_steps += 1
            if accept:
                x_previous = x_low
                x = x_high
                if sigma_up > 0:
                    x = x + fresh_noise(x, generator) * (s_noise * sigma_up)
                stats.n_accepted += 1
                stats.step_sizes.append(lam_next - lam)
                lam = lam_next
            else:
                stats.n_rejected += 1
            if callback is not None:
                callback({"x": x_start, "i": stats.n_steps - 1, "sigma": sigma_start, "sigma_hat": sigma_start,
                          "denoised": denoised, "error": error, "h": pid.h, "accepted": accept})
        if levels[-1] == 0:
            x = model(x, positive[-1])
            progress.update()
    finally:
        progress.close()
    return model.finish(x)
