"""The ODE core: backend-neutral solving with adaptive steps, dense output, the adjoint and NFE statistics.

The front door (``solve``, ``odeint``, the typed settings, ``Solution``, ``SolveStats``) is re-exported by
``pynodeta``; the engine room (``Backend``, ``SolverConfig``, ``StateNorm``, ...) is public here.
"""

from .adjoint import backward_solve, is_adjoint_backward
from .backends import Backend, SolverConfig, available_backends, get_backend, unavailable_backends
from .batched import BatchedSolveStats
from .dense import DenseSolution, odeint_dense
from .errors import (
    BackendUnavailableError,
    MaxStepsReachedError,
    NonFiniteStateError,
    ODESolveError,
    SolverWarning,
    StepSizeUnderflowError,
)
from .methods import ADAPTIVE_METHODS, FIXED_GRID_METHODS, METHODS, Method
from .norms import StateNorm, rms_norm
from .odeint import odeint, odeint_adjoint, odeint_event
from .settings import Adjoint, FixedGrid, IController, PIController, SolverSettings
from .solve import Solution, solve
from .stats import SolvesODE, SolveStats, find_ode_blocks, record_stats
from .tableau import ButcherTableau

__all__ = [
    "solve",
    "Solution",
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "odeint_dense",
    "DenseSolution",
    "SolverSettings",
    "IController",
    "PIController",
    "FixedGrid",
    "Adjoint",
    "Method",
    "ButcherTableau",
    "METHODS",
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "is_adjoint_backward",
    "backward_solve",
    "Backend",
    "SolverConfig",
    "available_backends",
    "unavailable_backends",
    "get_backend",
    "ODESolveError",
    "StepSizeUnderflowError",
    "MaxStepsReachedError",
    "NonFiniteStateError",
    "BackendUnavailableError",
    "SolverWarning",
    "StateNorm",
    "rms_norm",
    "SolveStats",
    "BatchedSolveStats",
    "record_stats",
    "SolvesODE",
    "find_ode_blocks",
]
