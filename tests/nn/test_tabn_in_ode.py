"""TA-BN inside an ODE right-hand side, integrated by torchdiffeq (the reference API pynodeta mirrors)."""

import pytest
import torch
from torch import nn

from pynodeta.nn import ConcatLinear, TABatchNorm1d, TimeSequential

torchdiffeq = pytest.importorskip("torchdiffeq")

M = 10
RK4 = dict(method="rk4", options=dict(step_size=0.25))  # evaluates f at t = k/8, k = 0..8


def _rhs(update_stats_in_backward=False):
    torch.manual_seed(0)
    tabn = TABatchNorm1d(8, M=M, update_stats_in_backward=update_stats_in_backward)
    return TimeSequential(ConcatLinear(2, 8), tabn, nn.Tanh(), ConcatLinear(8, 2))


def _moved(tabn):
    """Grid points whose running mean left its initial value 0."""
    return set(torch.nonzero(tabn.running_mean.abs().sum(1) > 0).flatten().tolist())


def test_train_solve_updates_the_grid_points_around_visited_times():
    f = _rhs().train()
    y0 = torch.randn(16, 2) + 1
    torchdiffeq.odeint(f, y0, torch.tensor([0.0, 1.0]), **RK4)
    visited = {k / 8 for k in range(9)}
    # Grid points with a nonzero Eq. 7 weight for some visited time (a time on a grid point has one).
    neighbours = {m for m in range(M + 1) if any(abs(t * M - m) < 1 for t in visited)}
    assert _moved(f[1]) == neighbours


@pytest.mark.parametrize("update_in_backward", [False, True])
def test_adjoint_backward_solve_updates_statistics_only_when_asked(update_in_backward):
    f = _rhs(update_in_backward).train()
    y0 = torch.randn(16, 2) + 1
    span = torch.tensor([0.0, 1.0])
    ys = torchdiffeq.odeint_adjoint(f, y0, span, adjoint_params=tuple(f.parameters()), **RK4)
    after_forward = f[1].running_mean.clone()
    ys[-1].pow(2).sum().backward()
    assert torch.equal(f[1].running_mean, after_forward) != update_in_backward
    assert all(p.grad is not None for p in f.parameters())


def test_eval_solve_is_batch_independent():
    f = _rhs().train()
    torchdiffeq.odeint(f, torch.randn(64, 2), torch.tensor([0.0, 1.0]), **RK4)  # collect statistics
    f.eval()
    y0 = torch.randn(32, 2)
    big = torchdiffeq.odeint(f, y0, torch.tensor([0.0, 1.0]), **RK4)[-1]
    pair = torchdiffeq.odeint(f, y0[:2], torch.tensor([0.0, 1.0]), **RK4)[-1]
    torch.testing.assert_close(pair, big[:2], rtol=0, atol=1e-6)
    # A reversed-time solve from T back to 0 stays on the grid.
    back = torchdiffeq.odeint(f, big[:2], torch.tensor([1.0, 0.0]), **RK4)[-1]
    assert torch.isfinite(back).all()
