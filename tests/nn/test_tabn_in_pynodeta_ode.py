"""TA-BN inside an ODE right-hand side integrated by pynodeta's own solver and adjoint."""

import pytest
import torch
from torch import nn

import pynodeta as pn
from pynodeta.nn import ConcatLinear, TABatchNorm1d, TimeSequential

M = 10
SPAN = torch.tensor([0.0, 1.0])
LOOSE = dict(method="dopri5", rtol=1e-3, atol=1e-3)


def _rhs(update_stats_in_backward=False):
    torch.manual_seed(0)
    tabn = TABatchNorm1d(8, M=M, update_stats_in_backward=update_stats_in_backward)
    return TimeSequential(ConcatLinear(2, 8), tabn, nn.Tanh(), ConcatLinear(8, 2))


def _moved(tabn, initial):
    return set(torch.nonzero((tabn.running_mean != initial).any(1)).flatten().tolist())


def test_train_solve_moves_exactly_the_grid_points_around_evaluated_times():
    f = _rhs().train()
    with pn.record_stats() as log:
        pn.odeint(f, torch.randn(16, 2) + 1, SPAN, **LOOSE)
    # dopri5's initial-step probe evaluates f past t = 1; TA-BN treats it as t = 1.
    visited = [min(max(float(t), 0.0), 1.0) for t in log[-1].t_evaluated]
    assert len(visited) > 2
    expected = {m for m in range(M + 1) if any(abs(t * M - m) < 1 for t in visited)}
    assert _moved(f[1], torch.zeros(8)) == expected


@pytest.mark.parametrize("update_in_backward", [False, True])
def test_pynodeta_adjoint_updates_statistics_in_backward_only_when_asked(update_in_backward):
    f = _rhs(update_in_backward).train()
    ys = pn.odeint_adjoint(f, torch.randn(16, 2) + 1, SPAN, adjoint_params=tuple(f.parameters()), **LOOSE)
    after_forward = f[1].running_mean.clone()
    ys[-1].pow(2).sum().backward()
    assert torch.equal(f[1].running_mean, after_forward) != update_in_backward
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in f.parameters())


def test_eval_solve_through_pynodeta_is_batch_independent():
    f = _rhs().train()
    pn.odeint(f, torch.randn(64, 2), SPAN, **LOOSE)
    f.eval()
    y0 = torch.randn(32, 2)
    fixed = dict(method="rk4", options=dict(step_size=0.125))  # same steps whatever the batch
    big = pn.odeint(f, y0, SPAN, **fixed)[-1]
    pair = pn.odeint(f, y0[:2], SPAN, **fixed)[-1]
    torch.testing.assert_close(pair, big[:2], rtol=0, atol=1e-6)
    loose = pn.IController(rtol=1e-3, atol=1e-3)
    solution = pn.solve(f, y0, SPAN.flip(0), method="dopri5", controller=loose)  # reversed time stays on the grid
    assert torch.isfinite(solution.ys).all()


def test_eval_tabn_field_replays_as_a_graph_with_the_eager_solution(graph_stand_in):
    """backend_options={"cuda_graph": True}: a recorded step reads nothing back to the host, so an eval-mode
    TA-BN takes its grid cell on the device (the per-sample path) while recording; the replays give the eager
    solution to the solve's tolerance. (Not to round-off: γ(t), β(t) and the statistics have kinks at the grid
    points, where the step control turns round-off into different steps, as the compiled step's does.)"""
    f = _rhs().double().eval()
    with torch.no_grad():
        for p in f[1].parameters():
            p.copy_(torch.rand_like(p) + 0.5)  # γ, β that vary over the grid, so the cell matters
        f[1].running_mean.copy_(torch.randn_like(f[1].running_mean))
    y0 = torch.randn(16, 2, dtype=torch.float64) + 1
    span = SPAN.double()
    with torch.no_grad():
        eager = pn.solve(f, y0, span, controller=pn.IController(rtol=1e-6, atol=1e-8))
        graphed = pn.solve(f, y0, span, controller=pn.IController(rtol=1e-6, atol=1e-8),
                           backend_options={"cuda_graph": True})
    assert graph_stand_in[0].replays > 0
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-5, atol=1e-7)
