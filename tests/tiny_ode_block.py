"""The one tiny ODE block the tests share: a user's block following ``pynodeta.ode.SolvesODE``."""

from __future__ import annotations

import torch
from torch import nn

import pynodeta as pn

LOOSE_ADJOINT = pn.SolverSettings(controller=pn.IController(rtol=1e-3, atol=1e-3), adjoint=True)


class TinyODEBlock(nn.Module):
    """``block(y0)`` -> y(t_span[1]), or ``block(y0, t)`` -> y at every time of ``t``, with
    dy/dt = func(t, y) solved by ``pn.solve(**solver)``; keeps ``last_stats`` like ``ODEBlock``."""

    def __init__(self, func: nn.Module, solver: pn.SolverSettings = LOOSE_ADJOINT, t_span=(0.0, 1.0)):
        super().__init__()
        self.func, self.solver, self.t_span, self.last_stats = func, solver, t_span, None

    def forward(self, y0: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        times = torch.tensor(self.t_span, dtype=y0.dtype) if t is None else t
        sol = pn.solve(self.func, y0, times, **self.solver)
        self.last_stats = sol.stats
        return sol.ys if t is not None else sol.ys[-1]
