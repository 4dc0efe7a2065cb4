"""The ODE core: backend-neutral solving with adaptive steps, dense output, the adjoint and NFE statistics."""

from .adjoint import backward_solve, is_adjoint_backward
from .backends import Backend, SolverConfig, available_backends, get_backend
from .errors import (
    BackendUnavailableError,
    MaxStepsReachedError,
    NonFiniteStateError,
    ODESolveError,
    StepSizeUnderflowError,
)
from .methods import ADAPTIVE_METHODS, FIXED_GRID_METHODS, METHODS
from .norms import StateNorm, rms_norm
from .odeint import odeint, odeint_adjoint
from .solve import Solution, solve
from .stats import SolveStats, record_stats

__all__ = [
    "solve",
    "Solution",
    "odeint",
    "odeint_adjoint",
    "METHODS",
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "is_adjoint_backward",
    "backward_solve",
    "Backend",
    "SolverConfig",
    "available_backends",
    "get_backend",
    "ODESolveError",
    "StepSizeUnderflowError",
    "MaxStepsReachedError",
    "NonFiniteStateError",
    "BackendUnavailableError",
    "StateNorm",
    "rms_norm",
    "SolveStats",
    "record_stats",
]
