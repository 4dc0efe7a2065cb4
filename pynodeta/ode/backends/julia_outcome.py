"""What a ``PyNoDeTa.solve_flat`` result means for pynodeta: its return code, statistics and outputs.

Pure functions of the named tuple Julia returns (no Julia needed to test them); shared by the CPU and
GPU paths of ``backend="julia"``.
"""

from __future__ import annotations

import numpy as np

from ..stats import SolveStats
from .external import ExternalOutcome

__all__ = ["SUCCESS_RETCODES", "retcode_status", "record_statistics", "n_reached", "outcome"]

# SciMLBase.successful_retcode's list: the solve finished as asked (Terminated: a callback stopped it,
# StalledSuccess: a steady state was reached). ExternalOutcome still checks that every output exists.
SUCCESS_RETCODES = frozenset(
    {"Success", "Terminated", "StalledSuccess", "ExactSolutionLeft", "ExactSolutionRight", "FloatingPointLimit"}
)


def retcode_status(retcode: str, state_finite: bool) -> str:
    """ExternalOutcome status of an OrdinaryDiffEq return code.

    Args:
        retcode: ``String(Symbol(sol.retcode))``, e.g. ``"Success"``, ``"MaxIters"``, ``"Unstable"``.
        state_finite: whether the integrator's last state is finite (``u_finite`` from Julia).

    ``Unstable`` means OrdinaryDiffEq's instability check fired. With ``min_step`` pynodeta passes
    ``dtmin`` with ``force_dtmin=true``, and a collapsing step size is then reported as ``Unstable``
    rather than ``DtLessThanMin``; only a non-finite state makes it a non-finite-state error.
    """
    if retcode in SUCCESS_RETCODES:
        return "success"
    if retcode == "MaxIters":
        return "max_steps"
    if retcode == "DtLessThanMin":
        return "step_underflow"
    if retcode == "Unstable":
        return "step_underflow" if state_finite else "non_finite"
    if retcode == "DtNaN":  # the error estimate was NaN: func produced a non-finite value
        return "non_finite"
    return "failure"


def record_statistics(result, stats: SolveStats) -> None:
    """Step counts and accepted step sizes from Julia's result into ``stats`` (nfe is counted in Python)."""
    stats.n_accepted, stats.n_rejected = int(result.naccept), int(result.nreject)
    stats.n_steps = stats.n_accepted + stats.n_rejected
    stats.step_sizes.extend(float(h) for h in np.asarray(result.step_sizes))


def n_reached(saved_t, times: np.ndarray) -> int:
    """How many requested times were saved, in order: the prefix of ``times`` the solver reached."""
    saved = np.asarray(saved_t, dtype=np.float64)
    n = 0
    while n < min(len(saved), len(times)) and saved[n] == times[n]:
        n += 1
    return n


def outcome(result, states: np.ndarray, times: np.ndarray, stats: SolveStats) -> ExternalOutcome:
    """The ExternalOutcome of a result whose saved states are ``states: (n_saved, size)`` (numpy)."""
    record_statistics(result, stats)
    ys = np.asarray(states)[: n_reached(result.t, times)].copy()
    retcode = str(result.retcode)
    status = retcode_status(retcode, bool(result.u_finite))
    return ExternalOutcome(ys, status, float(result.t_reached), float(result.dt), f"retcode {retcode}")
