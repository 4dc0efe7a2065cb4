"""Gradients with respect to per-sample output times, by the exact-flow formulas of the shared-step mode:
``dL/dt_bi = <dL/dy_bi, f(t_bi, y_bi)>`` for i >= 1 and ``dL/dt_b0 = -<dL/dy_b0, f(t_b0, y_b0)>`` (moving a
sample's start shifts its whole flow), with ``dL/dy_b0`` the gradient that reaches y0 through the solve.
Both gradient modes (backprop and adjoint) provide that, so the two thin autograd nodes wrap either one."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import refuse_second_derivatives_through_times
from .stats import BatchedSolveStats

__all__ = ["solve_with_time_gradients"]


class _StartTime(torch.autograd.Function):
    """Identity on y0; backward gives dL/dt_b0 = -<dL/dy_b0, f(t_b0, y_b0)> per sample."""

    @staticmethod
    def forward(ctx, t0, y0, f_start):
        ctx.save_for_backward(f_start)
        ctx.t_dtype = t0.dtype
        return y0.clone()

    @staticmethod
    def backward(ctx, grad):
        refuse_second_derivatives_through_times()
        (f_start,) = ctx.saved_tensors
        return -(grad * f_start).sum(dim=1).to(ctx.t_dtype), grad, None


class _OutputTimes(torch.autograd.Function):
    """Identity on ys (batch, n, features); backward gives dL/dt_bi = <dL/dy_bi, f(t_bi, y_bi)> for i >= 1."""

    @staticmethod
    def forward(ctx, t_later, ys, f_out):
        ctx.save_for_backward(f_out)
        ctx.t_dtype = t_later.dtype
        return ys.clone()

    @staticmethod
    def backward(ctx, grad):
        refuse_second_derivatives_through_times()
        (f_out,) = ctx.saved_tensors
        return (grad[:, 1:] * f_out).sum(dim=2).to(ctx.t_dtype), grad, None


def solve_with_time_gradients(rhs: Callable, t: torch.Tensor, y0: torch.Tensor,
                              solve: Callable[[torch.Tensor], torch.Tensor],
                              stats: BatchedSolveStats) -> torch.Tensor:
    """``solve(y0) -> (batch, n, features)`` with gradients for ``t: (batch, n)`` (n + ... extra calls of func:
    one at the start and one at every later output time, counted in the statistics)."""
    n = t.shape[1]
    with torch.no_grad():
        f_start = rhs(t[:, 0].detach().to(y0.dtype), y0.detach())
    ys = solve(_StartTime.apply(t[:, 0], y0, f_start))
    with torch.no_grad():
        f_out = torch.stack([rhs(t[:, i].detach().to(y0.dtype), ys[:, i].detach()) for i in range(1, n)], dim=1)
    stats.nfe += n
    stats.nfe_per_sample += n
    ys = torch.cat([y0[:, None], ys[:, 1:]], dim=1)  # y(t0) = y0 does not move with t0
    return _OutputTimes.apply(t[:, 1:], ys, f_out)
