"""How the probability-flow ODE and the likelihood solve: their ``SolverSettings``, and their inputs' checks.

``probability_flow`` and ``log_likelihood`` take ``solver=SolverSettings(...)``; torchdiffeq's spellings
(``method=``, ``rtol=``, ``atol=``, ``options=``, ``controller="pi"``, ``adjoint_*=`` ...) still work and
become the same typed settings here, in one place, through ``SolverSettings.from_arguments``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..ode.backends import get_backend
from ..ode.methods import Method
from ..ode.settings import Adjoint, IController, SolverSettings
from ._checks import all_finite

__all__ = ["FLOW_SOLVER", "flow_solver", "staying_inside_the_span", "class_label_arguments", "check_finite_x"]

FLOW_SOLVER = SolverSettings(method="dopri5", controller=IController(rtol=1e-5, atol=1e-5))
"""The default of both functions: dopri5 with the integral controller at rtol = atol = 1e-5."""

# the keyword arguments of solve that the two functions accept as sugar for solver=SolverSettings(...)
SOLVE_ARGUMENTS = ("method", "controller", "adjoint", "backend", "max_steps", "warn_after_steps", "backend_options",
                   "batched", "rtol", "atol", "options", "adjoint_rtol", "adjoint_atol", "adjoint_method",
                   "adjoint_options", "adjoint_params")


def flow_solver(caller: str, solver: SolverSettings | None, solve_arguments: dict[str, Any]) -> SolverSettings:
    """``solver``, or the settings that ``solve``'s keyword arguments spell; ``FLOW_SOLVER`` for neither.

    The sugar keeps its old defaults: rtol = atol = 1e-5 unless a typed controller is given (whose own
    tolerances then hold), dopri5 on the torch backend.
    """
    unknown = sorted(set(solve_arguments) - set(SOLVE_ARGUMENTS))
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {unknown}; it takes solver=SolverSettings(...) "
                        f"or solve's keyword arguments {list(SOLVE_ARGUMENTS)}")
    if solver is not None:
        if not isinstance(solver, SolverSettings):
            raise TypeError(f"{caller}(): solver must be a SolverSettings, got {type(solver).__name__}; e.g. "
                            "SolverSettings(method='dopri5', controller=IController(rtol=1e-5, atol=1e-5))")
        if solve_arguments:
            given = ", ".join(f"{name}=" for name in solve_arguments)
            raise TypeError(f"{caller}() got both solver= and {given}: set {given} on the SolverSettings "
                            "instead (e.g. SolverSettings(method=..., controller=IController(rtol=..., atol=...))), "
                            "or drop solver=")
        return solver
    if not solve_arguments:
        return FLOW_SOLVER
    typed_controller = solve_arguments.get("controller") is not None and not isinstance(solve_arguments["controller"],
                                                                                         str)
    defaults = {} if typed_controller else {"rtol": FLOW_SOLVER.controller.rtol, "atol": FLOW_SOLVER.controller.atol}
    return SolverSettings.from_arguments(**{**defaults, **solve_arguments})


def staying_inside_the_span(times: torch.Tensor, solver: SolverSettings) -> SolverSettings:
    """``solver`` with both ends of the span ``times = [σ_start, σ_end]`` added to its controllers' ``step_t``.

    An adaptive solve steps past its last time and interpolates back (torchdiffeq's stepping); with the
    end among the step_t points the last step lands on it instead, and the initial-step probe stays short
    of it, so the denoiser is never asked for a σ outside [σ_start, σ_end] (a DDPM denoiser has none
    beyond its schedule's). The start is there for the adjoint's backward solve, which ends on it (its own
    controller, where the ``Adjoint`` has one, gets them too). Fixed-grid methods end on the span's ends anyway.
    """
    ends = tuple(times.tolist())  # as the solve sees them: float32 times round, and a stop must equal the end
    controller = solver.controller
    if controller is None and _is_adaptive(solver.method, solver.backend):
        controller = IController()  # the method's default controller, spelled out to hold the ends
    adjoint = solver.adjoint
    if isinstance(adjoint, Adjoint) and isinstance(adjoint.controller, IController):
        adjoint = replace(adjoint, controller=_with_step_t(adjoint.controller, ends))
    return replace(solver, controller=_with_step_t(controller, ends), adjoint=adjoint)


def _with_step_t(controller: Any, ends: tuple[float, ...]) -> Any:
    if not isinstance(controller, IController):
        return controller  # FixedGrid (or None for a fixed-grid method): its grid ends on the span's ends
    return replace(controller, step_t=(*controller.step_t, *ends))


def _is_adaptive(method: str | Method, backend: str) -> bool:
    return method.adaptive if isinstance(method, Method) else get_backend(backend).is_adaptive(method)


def class_label_arguments(class_labels: torch.Tensor | None, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The denoiser's keyword arguments for ``class_labels`` (checked: one-hot (batch, num_classes), one row
    per sample of x, all-zero rows unconditional): ``{}`` for None, so a two-argument denoiser keeps working."""
    if class_labels is None:
        return {}
    if not isinstance(class_labels, torch.Tensor) or class_labels.ndim != 2 or not class_labels.is_floating_point():
        got = (f"shape {tuple(class_labels.shape)} of dtype {class_labels.dtype}"
               if isinstance(class_labels, torch.Tensor) else type(class_labels).__name__)
        raise TypeError(f"class_labels must be a float one-hot tensor of shape (batch, num_classes), got {got}; "
                        "e.g. torch.nn.functional.one_hot(labels, num_classes).float()")
    if class_labels.shape[0] != x.shape[0]:
        raise ValueError(f"class_labels must have one row per sample: x has batch {x.shape[0]}, class_labels "
                         f"{class_labels.shape[0]} rows")
    if class_labels.device != x.device:
        raise ValueError(f"class_labels are on {class_labels.device} but x on {x.device}: move them with "
                         "class_labels.to(x.device)")
    return {"class_labels": class_labels}


def check_finite_x(x: torch.Tensor, what: str, fix: str) -> None:
    """Refuse NaN/Inf in the caller's ``x`` under its own name, before the solver refuses it as its ``y0``."""
    if not all_finite(x):
        raise ValueError(f"x ({what}) contains NaN or Inf; {fix}")
