"""The probability-flow ODE dx/dσ = (x − D(x, σ))/σ (EDM Eq. 4 with σ(t) = t), solved by ``pynodeta.solve``."""

from __future__ import annotations

from typing import Any

import torch

from ..ode.settings import SolverSettings
from ..ode.solve import Solution, solve
from ._checks import Denoiser, call_denoiser, check_within_denoiser_range, nonfinite_denoiser_message
from ._output_checks import OutputChecks
from .flow_solver import check_finite_x, class_label_arguments, flow_solver, staying_inside_the_span

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


def probability_flow(denoiser: Denoiser, x: torch.Tensor, sigma_start: float, sigma_end: float, *,
                     solver: SolverSettings | None = None, class_labels: torch.Tensor | None = None,
                     **solve_arguments: Any) -> Solution:
    """Carry x from noise level ``sigma_start`` to ``sigma_end`` along the probability-flow ODE.

    Either direction works: 80 → 0.002 samples (then ``D(x, 0.002)`` removes the last noise),
    0.002 → 80 encodes. The ODE's time is σ itself. Both ends must lie in the noise levels the
    denoiser declares (its ``sigma_min``/``sigma_max``, e.g. a ``DenoiserFromEpsilon``'s schedule
    range), and every evaluation of an adaptive method stays between them. Returns the ``Solution`` of
    ``pynodeta.solve``: ``.ys[-1]`` is x at ``sigma_end`` and ``.stats`` holds NFE and steps.

    Args:
        solver: how to solve, e.g. ``SolverSettings(method="dopri5", controller=IController(rtol=1e-5,
            atol=1e-5))``, which is the default (``FLOW_SOLVER``). The span's ends are added to its
            controllers' ``step_t``.
        class_labels: one-hot ``(batch, num_classes)`` labels passed to every denoiser call as
            ``class_labels=`` (all-zero rows: unconditional); None calls ``denoiser(x, sigma)``.
        solve_arguments: ``solve``'s keyword arguments instead of ``solver`` (``method``, ``rtol``,
            ``atol``, ``options``, ``controller``, ``adjoint``, ``backend``, ...), with the defaults
            rtol = atol = 1e-5; not together with ``solver``.
    """
    check_sigma_range(sigma_start, sigma_end)
    check_within_denoiser_range(denoiser, {"sigma_start": sigma_start, "sigma_end": sigma_end})
    check_finite_x(x, "the state at sigma_start", "pass finite values (noise: randn(...) * sigma_start)")
    extra_args = class_label_arguments(class_labels, x)
    solver = flow_solver("probability_flow", solver, solve_arguments)

    outputs = OutputChecks(nonfinite_denoiser_message)

    def drift(sigma: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        denoised = call_denoiser(denoiser, state, sigma, extra_args)
        outputs.check(denoised, sigma)
        return (state - denoised) / sigma

    times = torch.tensor([sigma_start, sigma_end], dtype=x.dtype, device=x.device)
    with outputs.around_solve():
        return solve(drift, x, times, **staying_inside_the_span(times, solver))
