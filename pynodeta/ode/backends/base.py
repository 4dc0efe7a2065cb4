"""The seam between pynodeta's front doors (solve/odeint/adjoint) and the solvers that do the work.

A backend integrates ``dy/dt = func(t, y)`` for one tensor state over a 1-D tensor of output times and
fills a SolveStats. Front doors have already validated the input and flattened tuple states, so a
backend never sees a tuple. The adjoint is built on top of this interface (it is one more
``integrate`` of the augmented system), so it works unchanged with every backend.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..norms import StateNorm
from ..stats import SolveStats

__all__ = ["RHS", "SolverConfig", "Backend"]

RHS = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A right-hand side ``func(t, y) -> dy/dt``: ``t`` a 0-d tensor of y's dtype, result shaped like ``y``."""


@dataclass(frozen=True)
class SolverConfig:
    """Validated solver settings handed to a backend.

    Attributes:
        method: method name, one of the backend's ``methods``, or (torch backend) a ``Method`` object.
        rtol, atol: tolerances (>= 0, not both 0): floats, or flat per-element tensors shaped like the flat state.
        controller: ``"i"`` (integral controller, torchdiffeq's) or ``"pi"`` (proportional-integral).
        gains: the PI controller's (alpha, beta); (1, 0) for the I controller.
        first_step: initial step size, or None to select it automatically (Hairer II.4).
        max_num_steps: limit on attempted steps over the whole solve.
        warn_after_steps: warn once (with t and dt) when a solve takes more steps than this; None: never.
        min_step, max_step: bounds on the step size (magnitudes).
        step_size: the step of a fixed-grid method (None: step between consecutive output times).
        norm: norm of the scaled error; None means RMS over the whole state.
        safety, ifactor, dfactor: step-size controller constants (torchdiffeq's defaults).
        interpolation: how fixed-grid methods produce outputs between grid points ("linear" or "cubic").
        extra: backend-specific options, passed through untouched.
        callbacks: ``StepCallbacks`` read from func (torchdiffeq's callback_step/accept/reject), or None.
    """

    method: Any  # str, or a pynodeta.ode.Method for the torch backend
    rtol: float | torch.Tensor = 1e-7
    atol: float | torch.Tensor = 1e-9
    controller: str = "i"
    gains: tuple[float, float] = (1.0, 0.0)
    first_step: float | None = None
    max_num_steps: int = 2**31 - 1
    warn_after_steps: int | None = None
    min_step: float = 0.0
    max_step: float = float("inf")
    step_size: float | None = None
    norm: StateNorm | Callable[[torch.Tensor], torch.Tensor] | None = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    interpolation: str = "linear"
    extra: Mapping[str, Any] = field(default_factory=dict)
    callbacks: Any = None  # pynodeta.ode.callbacks.StepCallbacks
    perturb: bool = False  # fixed grid: evaluate one ulp inside the step at its ends
    grid_constructor: Callable | None = None  # fixed grid: (func, y0, t) -> step points
    step_t: tuple[float, ...] = ()  # adaptive: times to step on
    jump_t: tuple[float, ...] = ()  # adaptive: discontinuities of func, stepped on and restarted from
    max_iters: int = 4  # Adams: corrector iterations per step (rtol/atol are its convergence test)
    max_order: int = 12  # Adams: highest order


class Backend(abc.ABC):
    """An ODE solver implementation that pynodeta's front doors can dispatch to."""

    #: the name users pass as ``backend=...``
    name: str = ""
    #: True if autograd can differentiate through ``integrate`` (direct backprop); external backends
    #: are not, and must be used with ``adjoint=True`` when gradients are needed.
    differentiable: bool = False

    @abc.abstractmethod
    def methods(self) -> Sequence[str]:
        """The method names this backend accepts."""

    def is_adaptive(self, method: str) -> bool:
        """Whether ``method`` chooses its own steps (uses rtol/atol)."""
        return True

    @abc.abstractmethod
    def integrate(
        self, func: RHS, y0: torch.Tensor, t: torch.Tensor, config: SolverConfig, stats: SolveStats
    ) -> torch.Tensor:
        """Solve from ``y0`` at ``t[0]`` and return the states at every ``t``: shape ``(len(t), *y0.shape)``.

        ``t`` is 1-D and strictly increasing or strictly decreasing (integrate backwards then).
        Must fill ``stats`` (nfe, steps, t_evaluated, step_sizes) and raise the errors of
        ``pynodeta.ode.errors`` (StepSizeUnderflowError, MaxStepsReachedError, NonFiniteStateError).
        """
