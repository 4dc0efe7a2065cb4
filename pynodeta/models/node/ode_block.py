"""The ODE block: integrate a time-aware module over a span and keep the statistics of the solve."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...ode import IController, SolverSettings, SolveStats, solve
from ...ode.stats import SolvesODE, find_ode_blocks

__all__ = ["NODE_SOLVER", "ODEBlock", "ode_blocks", "total_nfe"]

State = torch.Tensor | tuple[torch.Tensor, ...]


NODE_SOLVER = SolverSettings(controller=IController(rtol=1e-3, atol=1e-3), adjoint=True)
"""The models' default: the papers' dopri5 with rtol = atol = 1e-3 and adjoint gradients."""


def check_t_span(t_span) -> tuple[float, float]:
    """``t_span`` as two finite, distinct floats; ValueError otherwise."""
    try:
        t0, t1 = (float(v) for v in t_span)
    except (TypeError, ValueError):
        raise ValueError(f"t_span must be a pair of numbers (t0, t1), got {t_span!r}") from None
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
        raise ValueError(f"t_span must be two finite, distinct times, got {t_span!r}")
    return t0, t1


class ODEBlock(nn.Module):
    """``x -> y(t1)`` where ``dy/dt = func(t, y)``, ``y(t0) = x``, solved by ``pynodeta.solve``.

    forward(x): x a tensor ``(batch, ...)`` or a tuple of such (a tuple state, e.g. position and
    velocity) -> the state at ``t_span[1]``, same structure. ``forward(x, t)`` with a 1-D tensor of
    times (``t[0]`` the start) returns the whole trajectory instead, ``(len(t), batch, ...)``.

    ``last_stats`` is the SolveStats of the last forward solve; its adjoint fields fill in when
    backward runs (adjoint mode). Note that an adaptive solver's error norm is taken over the whole
    batch, so its steps (and a sample's output, to within the tolerance) depend on the batch.
    """

    def __init__(
        self,
        func: nn.Module,                              # time-aware right-hand side, forward(t, y)
        t_span: tuple[float, float] = (0.0, 1.0),     # integrate from t_span[0] to t_span[1]
        solver: SolverSettings | None = None,         # default NODE_SOLVER (dopri5, 1e-3, adjoint)
        **solve_kwargs: Any,                          # or solve's own arguments (method=, rtol=, options=, ...)
    ):
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError(f"func must be an nn.Module with forward(t, y), got {type(func).__name__}")
        self.t_span = check_t_span(t_span)
        if solver is not None and solve_kwargs:
            raise ValueError(f"pass either solver=SolverSettings(...) or solve's arguments {sorted(solve_kwargs)}, "
                             "not both")
        if solver is not None and not isinstance(solver, SolverSettings):
            raise TypeError(f"solver must be a SolverSettings, got {type(solver).__name__}")
        for reserved in ("t", "y0", "func"):
            if reserved in solve_kwargs:
                raise ValueError(f"pass {reserved!r} as ODEBlock's own argument, not through solve_kwargs")
        if solve_kwargs:  # the models' defaults for what is not given: tolerances 1e-3 and the adjoint
            defaults = {"rtol": 1e-3, "atol": 1e-3, "adjoint": True}
            if "controller" in solve_kwargs and not isinstance(solve_kwargs["controller"], str):
                defaults = {"adjoint": True}
            solver = SolverSettings.from_arguments(**{**defaults, **solve_kwargs})
        self.func = func
        self.solver = NODE_SOLVER if solver is None else solver
        self.last_stats: SolveStats | None = None

    def forward(self, x: State, t: torch.Tensor | None = None) -> State:
        like = x[0] if isinstance(x, tuple) else x
        times = torch.tensor(self.t_span, dtype=like.dtype, device=like.device) if t is None else t
        sol = solve(self.func, x, times, **self.solver)
        self.last_stats = sol.stats
        # a per-sample solve returns (batch, n, ...); the block keeps the shared layout (n, batch, ...)
        ys = sol.ys.transpose(0, 1) if self.solver.batched else sol.ys
        if t is not None:
            return ys
        return tuple(y[-1] for y in ys) if isinstance(ys, tuple) else ys[-1]

    @property
    def nfe_forward(self) -> int:
        """Right-hand-side evaluations of the last forward solve (0 before the first)."""
        return 0 if self.last_stats is None else self.last_stats.nfe

    @property
    def nfe_backward(self) -> int:
        """Evaluations of the last adjoint backward solve; 0 until backward runs, and always 0 when
        gradients come by backprop through the solver (there is no backward solve then)."""
        return 0 if self.last_stats is None else self.last_stats.nfe_adjoint

    def extra_repr(self) -> str:
        return f"t_span={self.t_span}, solver={self.solver}"


def ode_blocks(model: nn.Module) -> list[SolvesODE]:
    """Every ODE block inside ``model`` (itself included), in module order (see ``find_ode_blocks``)."""
    return find_ode_blocks(model)


def total_nfe(model: nn.Module) -> tuple[int, int]:
    """(forward, backward) NFE of the last solve of every ODEBlock in ``model``, summed."""
    stats = [b.last_stats for b in find_ode_blocks(model) if b.last_stats is not None]
    return sum(s.nfe for s in stats), sum(s.nfe_adjoint for s in stats)
