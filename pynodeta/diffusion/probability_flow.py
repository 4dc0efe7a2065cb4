"""The probability-flow ODE dx/dσ = (x − D(x, σ))/σ (EDM Eq. 4 with σ(t) = t), solved by ``pynodeta.solve``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..ode.backends import Backend, get_backend
from ..ode.methods import Method
from ..ode.settings import IController
from ..ode.solve import Solution, solve
from ._checks import Denoiser, check_within_denoiser_range, denoise

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


def staying_inside_the_span(times: torch.Tensor, method: str | Method, backend: str | Backend,
                            solve_options: dict[str, Any]) -> dict[str, Any]:
    """``solve_options`` with both ends of the span ``times = [σ_start, σ_end]`` added to the controller's ``step_t``.

    An adaptive solve steps past its last time and interpolates back (torchdiffeq's stepping); with the
    end among the step_t points the last step lands on it instead, and the initial-step probe stays short
    of it, so the denoiser is never asked for a σ outside [σ_start, σ_end] (a DDPM denoiser has none
    beyond its schedule's). The start is there for the adjoint's backward solve, which ends on it.
    Fixed-grid methods end on the span's ends anyway.
    """
    controller = solve_options.get("controller")
    ends = tuple(times.tolist())  # as the solve sees them: float32 times round, and a stop must equal the end
    if isinstance(controller, IController):
        return {**solve_options, "controller": replace(controller, step_t=(*controller.step_t, *ends))}
    if controller is not None and not isinstance(controller, str):
        return solve_options  # FixedGrid
    try:
        adaptive = method.adaptive if isinstance(method, Method) else get_backend(backend).is_adaptive(method)
    except (KeyError, ValueError):
        return solve_options  # an unknown method or backend: solve refuses it with its own message
    if not adaptive:
        return solve_options
    options = dict(solve_options.get("options") or {})
    step_t = options.get("step_t")
    step_t = [] if step_t is None else torch.as_tensor(step_t, dtype=torch.float64).reshape(-1).tolist()
    options["step_t"] = [*step_t, *ends]
    return {**solve_options, "options": options}


def probability_flow(denoiser: Denoiser, x: torch.Tensor, sigma_start: float, sigma_end: float,
                     method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, backend: str = "torch",
                     **solve_options: Any) -> Solution:
    """Carry x from noise level ``sigma_start`` to ``sigma_end`` along the probability-flow ODE.

    Either direction works: 80 → 0.002 samples (then ``D(x, 0.002)`` removes the last noise),
    0.002 → 80 encodes. The ODE's time is σ itself. Both ends must lie in the noise levels the
    denoiser declares (its ``sigma_min``/``sigma_max``, e.g. a ``DenoiserFromEpsilon``'s schedule
    range), and every evaluation of an adaptive method stays between them. Returns the ``Solution`` of
    ``pynodeta.solve``: ``.ys[-1]`` is x at ``sigma_end`` and ``.stats`` holds NFE and steps.
    ``solve_options`` go to ``pynodeta.solve`` (``options``, ``controller``, ``adjoint``, ...); the span's
    ends are added to the controller's ``step_t``.
    """
    check_sigma_range(sigma_start, sigma_end)
    check_within_denoiser_range(denoiser, {"sigma_start": sigma_start, "sigma_end": sigma_end})

    def drift(sigma: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return (state - denoise(denoiser, state, sigma)) / sigma

    times = torch.tensor([sigma_start, sigma_end], dtype=x.dtype, device=x.device)
    solve_options = staying_inside_the_span(times, method, backend, solve_options)
    return solve(drift, x, times, method=method, rtol=rtol, atol=atol, backend=backend, **solve_options)
