"""Time-awareness audit: find where a model's timestep signal dies (Kim et al. 2024, "The Disappearance of
Timestep Embedding").

``time_awareness(model, x, times)`` audits any module with forward(t, x); ``audit_ode_blocks``
finds the ODE blocks of a larger network and audits each right-hand side at its real input state.
The ``pynodeta diagnose`` command wraps both.
"""

from .audit import DEFAULT_TIMES, time_awareness
from .estimators import noise_floor, offset_fraction, output_sensitivity, survival_ratio, time_share
from .ode_blocks import audit_ode_blocks, capture_state, find_ode_functions
from .report import Finding, TimeAwarenessReport

__all__ = [
    "time_awareness",
    "audit_ode_blocks",
    "find_ode_functions",
    "capture_state",
    "TimeAwarenessReport",
    "Finding",
    "DEFAULT_TIMES",
    "time_share",
    "survival_ratio",
    "offset_fraction",
    "output_sensitivity",
    "noise_floor",
]
