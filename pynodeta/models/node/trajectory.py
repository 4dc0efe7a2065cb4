"""A neural ODE for trajectories of physical systems: y(t) on a time grid from y(t0), an MLP vector field.

As in the TA-BN paper's MuJoCo model (an MLP with BN on its first layers), the hidden layers may
carry any norm kind; a TA-BN grid [0, T] must cover the times the model is asked about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...ode import SolverSettings
from ..common import NormFactory, check_norm_kind
from .backbones import MLPField
from .ode_block import ODEBlock

__all__ = ["TrajectoryNODE"]


class TrajectoryNODE(nn.Module):
    """dy/dt = f(t, y) with f an MLP of ConcatLinear layers; forward returns y on a time grid.

    forward(t0, y0, t_grid): t0 a float or 0-d tensor, y0 (batch, dim), t_grid a strictly increasing
    1-D tensor with t_grid[0] >= t0 -> (len(t_grid), batch, dim), the state at every grid time.
    The vector field sees absolute time t.
    """

    def __init__(
        self,
        dim: int,                          # state dimension
        hidden: int = 64,                  # hidden units per layer
        depth: int = 3,                    # linear layers (depth - 1 hidden layers)
        norm: str = "none",                # norm of the hidden layers: any of pynodeta.nn.NORM_KINDS
        norm_layers: int | None = None,    # normalise only the first n hidden layers (default: all hidden)
        activation: str = "tanh",
        time_horizon: float = 1.0,         # T: the largest time asked about (TA-BN's grid is [0, T])
        groups: int | str | None = None,   # norm="gn": an int dividing the width, or "auto" (default; nn.group_count)
        norm_options: Mapping[str, Any] | None = None,  # make_norm options (TA-BN: M, momentum, ...)
        solver: SolverSettings | None = None,  # default dopri5, rtol = atol = 1e-3, adjoint
    ):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not time_horizon > 0:
            raise ValueError(f"time_horizon must be > 0, got {time_horizon}")
        check_norm_kind(norm)
        if norm_layers is not None and not 0 <= norm_layers <= depth - 1:
            raise ValueError(f"norm_layers must be in [0, depth - 1 = {depth - 1}] (hidden layers), got {norm_layers}")
        self.dim, self.norm, self.time_horizon = dim, norm, float(time_horizon)
        spec = NormFactory(norm, t_span=(0.0, self.time_horizon), groups=groups, options=norm_options)
        # the output layer stays unnormalised: it is the velocity of a physical state
        field = MLPField(dim, dim, hidden, depth, spec, activation, depth - 1 if norm_layers is None else norm_layers)
        self.ode = ODEBlock(field, (0.0, self.time_horizon), solver)

    def forward(self, t0, y0: torch.Tensor, t_grid: torch.Tensor) -> torch.Tensor:
        if y0.dim() != 2 or y0.shape[1] != self.dim:
            raise ValueError(f"y0 must be (batch, {self.dim}), got {tuple(y0.shape)}")
        if not isinstance(t_grid, torch.Tensor) or t_grid.dim() != 1 or len(t_grid) < 1:
            raise ValueError("t_grid must be a non-empty 1-D tensor of times")
        t0 = torch.as_tensor(t0, dtype=t_grid.dtype, device=t_grid.device).reshape(())
        if len(t_grid) > 1 and not bool((t_grid[1:] > t_grid[:-1]).all()):
            raise ValueError("t_grid must be strictly increasing")
        if t_grid[0] < t0:
            raise ValueError(f"t_grid[0] = {t_grid[0].item()} must be >= t0 = {t0.item()}")
        if t0 < 0 or t_grid[-1] > self.time_horizon:
            raise ValueError(f"times must lie in [0, time_horizon={self.time_horizon}], got t0 = {t0.item()}, "
                             f"t_grid[-1] = {t_grid[-1].item()}; build the model with a larger time_horizon")
        starts_at_t0 = bool(t_grid[0] == t0)
        times = t_grid if starts_at_t0 else torch.cat([t0[None], t_grid])
        if len(times) == 1:
            return y0[None]
        ys = self.ode(y0, times)
        return ys if starts_at_t0 else ys[1:]
