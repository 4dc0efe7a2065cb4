"""Exceptions and warnings of the ODE core. Each message says what happened and what to try."""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "ODESolveError",
    "StepSizeUnderflowError",
    "MaxStepsReachedError",
    "NonFiniteStateError",
    "BackendUnavailableError",
    "SolverWarning",
    "refuse_second_derivatives_through_times",
]


class ODESolveError(RuntimeError):
    """Base class of every failure that happens while integrating (not input validation)."""


class StepSizeUnderflowError(ODESolveError):
    """The adaptive controller asked for a step too small to advance time."""

    def __init__(self, t: float, dt: float, nfe: int):
        self.t, self.dt, self.nfe = t, dt, nfe
        super().__init__(
            f"step size underflow at t={t:.6g} (dt={dt:.3g}, nfe={nfe}): the problem is probably stiff or "
            "discontinuous there; try a larger atol/rtol, options={'min_step': ...}, a stiff solver "
            "(backend='scipy', method='radau'), or a fixed-step method"
        )


class MaxStepsReachedError(ODESolveError):
    """The step limit was hit. The part of the solution computed so far stays reachable.

    Attributes:
        t: the output times that were reached, a 1-D tensor (a prefix of the requested ``t``).
        ys: the solution at those times, shape ``(len(t), *y0.shape)``.
        t_reached: the solver time at which it stopped.
    """

    def __init__(self, max_num_steps: int, t_reached: float, t, ys, fixed_grid: bool = False):
        self.max_num_steps, self.t_reached, self.t, self.ys = max_num_steps, t_reached, t, ys
        remedy = ("or take a larger step_size (a fixed grid's step count is the interval over the step)" if fixed_grid
                  else "loosen rtol/atol, or check the dynamics for stiffness")
        super().__init__(
            f"max_num_steps={max_num_steps} reached at t={t_reached:.6g} after {len(t)} of the requested "
            f"output times; the partial solution is in this exception's .t and .ys. Raise "
            f"options={{'max_num_steps': ...}}, {remedy}"
        )


class NonFiniteStateError(ODESolveError):
    """NaN or Inf appeared in the state or in func's output."""

    def __init__(self, t: float, what: str):
        self.t = t
        super().__init__(
            f"{what} is not finite at t={t:.6g}: check func for overflow or division by zero there, "
            "or lower the step size (options={'max_step': ...})"
        )


class BackendUnavailableError(ImportError):
    """A solver backend was asked for but its runtime is missing."""


class SolverWarning(UserWarning):
    """A solve that will probably crawl: tolerances the state's dtype cannot resolve, or a very long run."""


def warn_long_solve(n_steps: int, t: float, dt: float) -> None:
    """Make a long solve visible once (torchdiffeq's default step limit is unlimited, so it may run for hours)."""
    warnings.warn(
        f"the solve has taken {n_steps} steps and is at t={t:.6g} with dt={dt:.3g}: it may be stiff, or its "
        "tolerances too tight for the state's dtype; set max_steps=... to stop it, or warn_after_steps=None "
        "to silence this", SolverWarning, stacklevel=4)


def warn_unresolvable_tolerance(dtype, rtol: float, atol: float, eps: float) -> None:
    warnings.warn(
        f"rtol={rtol:.3g}, atol={atol:.3g} ask for more than a {dtype} state can resolve "
        f"(its relative precision is {eps:.3g}): rounding noise will be read as error and the solver may "
        f"crawl; use rtol >= {10 * eps:.3g} or a float64 state", SolverWarning, stacklevel=4)


def refuse_second_derivatives_through_times() -> None:
    """In the backward of the nodes that give dL/dt by the exact-flow formulas: a backward that records its
    own graph (create_graph=True) is refused, since derivatives of it with respect to t would miss how the
    solver's steps move with t, silently."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "create_graph=True (second derivatives) through a solve whose t requires grad is not supported: "
            "dL/dt comes from the exact-flow formula dL/dt_i = <dL/dy_i, f(t_i, y_i)>, and the solver's steps "
            "are not differentiated with respect to t, so second derivatives that involve t would be wrong. "
            "Pass t.detach() for second derivatives with respect to y0 and func's parameters"
        )
