"""The probability-flow ODE dx/dσ = (x − D(x, σ))/σ (EDM Eq. 4 with σ(t) = t), solved by ``pynodeta.solve``."""

from __future__ import annotations

from typing import Any

import torch

from ..ode.solve import Solution, solve
from ._checks import Denoiser, denoise

__all__ = ["probability_flow", "check_sigma_range"]


def check_sigma_range(sigma_start: float, sigma_end: float, start_name: str = "sigma_start",
                      end_name: str = "sigma_end") -> None:
    """Both noise levels finite and > 0 (the ODE divides by σ) and distinct."""
    for name, value in ((start_name, sigma_start), (end_name, sigma_end)):
        if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
            raise ValueError(f"{name} must be a finite float > 0 (the ODE divides by σ; integrate to a small σ "
                             f"such as 0.002 and apply the denoiser there instead of 0), got {value!r}")
    if sigma_start == sigma_end:
        raise ValueError(f"{start_name} and {end_name} must differ, both are {sigma_start}")


def probability_flow(denoiser: Denoiser, x: torch.Tensor, sigma_start: float, sigma_end: float,
                     method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, backend: str = "torch",
                     **solve_options: Any) -> Solution:
    """Carry x from noise level ``sigma_start`` to ``sigma_end`` along the probability-flow ODE.

    Either direction works: 80 → 0.002 samples (then ``D(x, 0.002)`` removes the last noise),
    0.002 → 80 encodes. The ODE's time is σ itself. Returns the ``Solution`` of ``pynodeta.solve``:
    ``.ys[-1]`` is x at ``sigma_end`` and ``.stats`` holds NFE and steps. ``solve_options`` go to
    ``pynodeta.solve`` unchanged (``options``, ``controller``, ``adjoint``, ...).
    """
    check_sigma_range(sigma_start, sigma_end)

    def drift(sigma: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return (state - denoise(denoiser, state, sigma)) / sigma

    times = torch.tensor([sigma_start, sigma_end], dtype=x.dtype, device=x.device)
    return solve(drift, x, times, method=method, rtol=rtol, atol=atol, backend=backend, **solve_options)
