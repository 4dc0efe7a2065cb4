"""The trajectory-regression NODE: grids, norms in the vector field, fitting a damped oscillator."""

from __future__ import annotations

import math

import pytest
import torch

from pynodeta import solve
from pynodeta.models import TrajectoryNODE, ode_blocks
from pynodeta.nn import TABatchNorm1d
from pynodeta.ode import FixedGrid, IController, SolverSettings

from .helpers import NORMS

RK4_FINE = SolverSettings(method="rk4", controller=FixedGrid(step_size=0.1))


def damped_oscillator(t: torch.Tensor, y0: torch.Tensor, zeta: float = 0.2) -> torch.Tensor:
    """Exact x'' + 2ζx' + x = 0 with (x, v)(0) = y0: returns (len(t), batch, 2)."""
    wd = math.sqrt(1 - zeta ** 2)
    x0, v0 = y0[:, 0], y0[:, 1]
    b = (v0 + zeta * x0) / wd
    decay, c, s = torch.exp(-zeta * t)[:, None], torch.cos(wd * t)[:, None], torch.sin(wd * t)[:, None]
    x = decay * (x0 * c + b * s)
    v = decay * ((-zeta * x0 + wd * b) * c + (-zeta * b - wd * x0) * s)
    return torch.stack([x, v], dim=-1)


def test_exact_oscillator_helper_solves_its_ode():
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    ys = solve(lambda t, y: torch.stack([y[:, 1], -0.4 * y[:, 1] - y[:, 0]], dim=1), y0, t,
               controller=IController(rtol=1e-10, atol=1e-10)).ys
    torch.testing.assert_close(ys, damped_oscillator(t, y0))


@pytest.mark.parametrize("norm", NORMS)
def test_trajectory_shapes_and_norms(norm):
    model = TrajectoryNODE(2, hidden=8, depth=3, norm=norm, time_horizon=2.0, solver=RK4_FINE)
    t = torch.linspace(0, 2, 7)
    ys = model(0.0, torch.randn(4, 2), t)
    assert ys.shape == (7, 4, 2)
    ys.square().mean().backward()
    assert ode_blocks(model)[0].nfe_forward > 0
    if norm == "tabn":
        assert {(m.t_min, m.t_max) for m in model.modules() if isinstance(m, TABatchNorm1d)} == {(0.0, 2.0)}


def test_the_first_grid_point_may_lie_after_t0():
    torch.manual_seed(0)
    model = TrajectoryNODE(2, hidden=8, solver=SolverSettings(controller=IController(rtol=1e-8, atol=1e-8))).double()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    full = model(0.0, y0, torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64))
    later = model(0.0, y0, torch.tensor([0.3, 0.7, 1.0], dtype=torch.float64))
    torch.testing.assert_close(later, full[1:])
    torch.testing.assert_close(full[0], y0)


def test_fits_a_damped_oscillator():
    torch.manual_seed(0)
    t = torch.linspace(0, 2, 11)
    y0 = torch.randn(16, 2)
    target = damped_oscillator(t, y0)
    model = TrajectoryNODE(2, hidden=32, depth=3, norm="tabn", norm_layers=1, time_horizon=2.0,
                           solver=SolverSettings(method="rk4", controller=FixedGrid(step_size=0.2)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = (model(0.0, y0, t) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


@pytest.mark.parametrize(
    ("t0", "grid", "match"),
    [
        (0.0, [0.0, 1.5], r"times must lie in \[0, time_horizon=1.0\]"),
        (0.5, [0.2, 0.8], "must be >= t0"),
        (0.0, [0.0, 0.6, 0.4], "strictly increasing"),
    ],
)
def test_bad_time_grids(t0, grid, match):
    model = TrajectoryNODE(2, hidden=4, norm="tabn", solver=RK4_FINE)
    with pytest.raises(ValueError, match=match):
        model(t0, torch.randn(2, 2), torch.tensor(grid))


def test_bad_state_shape_and_options():
    model = TrajectoryNODE(3, hidden=4)
    with pytest.raises(ValueError, match=r"y0 must be \(batch, 3\)"):
        model(0.0, torch.randn(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="norm_layers must be in"):
        TrajectoryNODE(3, depth=3, norm_layers=3)
    with pytest.raises(ValueError, match="unknown norm kind"):
        TrajectoryNODE(3, norm="batch")
