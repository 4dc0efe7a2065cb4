"""Solver statistics: what a solve cost and where it evaluated the right-hand side."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["SolveStats", "record_stats", "SolvesODE", "find_ode_blocks"]


@dataclass
class SolveStats:
    """Statistics of one solve; the adjoint fields are filled in when the backward pass runs.

    Attributes:
        method, backend: what solved it.
        nfe: right-hand-side evaluations in the forward solve.
        n_steps: attempted steps (accepted + rejected) in the forward solve.
        n_accepted, n_rejected: accepted and rejected steps.
        t_evaluated: every time at which func was called in the forward solve, in call order.
        step_sizes: the size of every accepted forward step (positive, whatever the direction).
        nfe_adjoint, n_steps_adjoint, t_evaluated_adjoint: the same for the backward (adjoint) solve,
            which integrates the augmented system; zero/empty until backward runs.
    """

    method: str = ""
    backend: str = "torch"
    nfe: int = 0
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    t_evaluated: list[float] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    nfe_adjoint: int = 0
    n_steps_adjoint: int = 0
    t_evaluated_adjoint: list[float] = field(default_factory=list)

    def absorb_adjoint(self, backward: SolveStats) -> None:
        """Add the statistics of one backward (augmented-system) solve to the adjoint fields."""
        self.nfe_adjoint += backward.nfe
        self.n_steps_adjoint += backward.n_steps
        self.t_evaluated_adjoint.extend(backward.t_evaluated)

    def summary(self) -> str:
        return (
            f"{self.method} ({self.backend}): nfe={self.nfe} steps={self.n_steps} "
            f"(accepted {self.n_accepted}, rejected {self.n_rejected}), nfe_adjoint={self.nfe_adjoint}"
        )


_recorders: contextvars.ContextVar[tuple[list[SolveStats], ...]] = contextvars.ContextVar(
    "pynodeta_stats_recorders", default=()
)


@contextlib.contextmanager
def record_stats() -> Iterator[list[SolveStats]]:
    """Collect the SolveStats of every solve started inside the block, for code that calls ``odeint``.

    >>> with record_stats() as log:
    ...     ys = odeint(func, y0, t)
    >>> log[-1].nfe

    Scoped to the block and to the current thread/async context; blocks may nest.
    """
    log: list[SolveStats] = []
    token = _recorders.set(_recorders.get() + (log,))
    try:
        yield log
    finally:
        _recorders.reset(token)


def _publish(stats: SolveStats) -> None:
    for log in _recorders.get():
        log.append(stats)


@runtime_checkable
class SolvesODE(Protocol):
    """An ODE block: a module whose forward pass solves ``dy/dt = func(t, y)``.

    It exposes its right-hand side as ``func`` (a module with ``forward(t, y)``, which ``pynodeta
    diagnose`` audits) and the statistics of its last solve as ``last_stats`` (None before the first,
    read for NFE logging). ``pynodeta.models.ODEBlock`` is one; a user module with these two attributes
    is one too, without subclassing anything.
    """

    func: nn.Module
    last_stats: SolveStats | None


def find_ode_blocks(module: nn.Module) -> list[nn.Module]:
    """Every ODE block (``SolvesODE``) inside ``module``, itself included, in module order."""
    return [m for m in module.modules() if isinstance(m, SolvesODE)]
