"""pynodeta: time-dependent neural networks (neural ODEs, diffusion models) that keep their sense of time.

The solver's front door is re-exported here (``pn.solve``, ``pn.odeint``, the typed settings, errors);
its engine room (backends, ``SolverConfig``, norms) stays in ``pn.ode``. The other subpackages
(``pn.nn``, ``pn.models``, ``pn.data``, ``pn.diagnose``, ``pn.train``, ``pn.diffusion``,
``pn.metrics``, ``pn.ema``) load on first use.
"""

from __future__ import annotations

import importlib

from .ode import (
    METHODS,
    Adjoint,
    BackendUnavailableError,
    ButcherTableau,
    FixedGrid,
    IController,
    MaxStepsReachedError,
    Method,
    NonFiniteStateError,
    ODESolveError,
    PIController,
    Solution,
    SolverSettings,
    SolverWarning,
    SolveStats,
    StepSizeUnderflowError,
    odeint,
    odeint_adjoint,
    odeint_dense,
    odeint_event,
    record_stats,
    solve,
)

__version__ = "0.1.0"

_SUBPACKAGES = ("ode", "nn", "models", "data", "diagnose", "train", "diffusion", "metrics", "ema")

__all__ = [
    "solve",
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "odeint_dense",
    "Solution",
    "SolveStats",
    "record_stats",
    "SolverSettings",
    "IController",
    "PIController",
    "FixedGrid",
    "Adjoint",
    "Method",
    "ButcherTableau",
    "METHODS",
    "ODESolveError",
    "StepSizeUnderflowError",
    "MaxStepsReachedError",
    "NonFiniteStateError",
    "BackendUnavailableError",
    "SolverWarning",
    *_SUBPACKAGES,
    "__version__",
]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
