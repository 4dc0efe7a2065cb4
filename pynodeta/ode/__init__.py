"""The ODE core: backend-neutral solving with adaptive steps, dense output, the adjoint and NFE statistics."""

from .backends import Backend, SolverConfig, available_backends, get_backend
from .errors import (
    BackendUnavailableError,
    MaxStepsReachedError,
    NonFiniteStateError,
    ODESolveError,
    StepSizeUnderflowError,
)
from .norms import StateNorm, rms_norm
from .stats import SolveStats, record_stats

__all__ = [
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
