"""ODEBlock: exact solutions, statistics, adjoint vs backprop, tuple states, argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pynodeta.models import ODEBlock, ode_blocks, total_nfe
from pynodeta.ode import FixedGrid, SolverSettings


class Decay(nn.Module):
    """dy/dt = a·y (a learnable), with exact solution y0·exp(a·t)."""

    def __init__(self, a: float = -0.7):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, t, y):
        return self.a * y


class Oscillator(nn.Module):
    """x' = v, v' = -x: a tuple state with solution (cos t, -sin t) from (1, 0)."""

    def forward(self, t, state):
        x, v = state
        return v, -x


def test_final_state_is_the_exact_flow():
    block = ODEBlock(Decay(), t_span=(0.0, 2.0), rtol=1e-9, atol=1e-9, adjoint=False)
    y0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(block(y0), y0 * math.exp(-0.7 * 2.0), rtol=1e-7, atol=1e-9)
    assert block.last_stats.nfe == block.nfe_forward > 0
    assert block.nfe_backward == 0


def test_adjoint_gradient_matches_backprop_and_fills_backward_nfe():
    y0 = torch.tensor([0.5, 1.5], dtype=torch.float64)
    grads = {}
    for adjoint in (True, False):
        block = ODEBlock(Decay(), rtol=1e-10, atol=1e-10, adjoint=adjoint)
        block(y0).sum().backward()
        grads[adjoint] = block.func.a.grad.clone()
        assert (block.nfe_backward > 0) == adjoint
    # d/da sum(y0 e^a) = sum(y0) e^a at T = 1
    exact = y0.sum() * math.exp(-0.7)
    torch.testing.assert_close(grads[True], exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads[False], exact, rtol=1e-6, atol=0)


def test_tuple_state_and_trajectory_mode():
    block = ODEBlock(Oscillator(), t_span=(0.0, 1.0), rtol=1e-9, atol=1e-9, adjoint=False)
    x0, v0 = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    x1, v1 = block((x0, v0))
    torch.testing.assert_close(x1, torch.full_like(x0, math.cos(1.0)))
    torch.testing.assert_close(v1, torch.full_like(x0, -math.sin(1.0)))
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    xs, vs = block((x0, v0), t)
    assert xs.shape == (5, 3)
    torch.testing.assert_close(xs[:, 0], torch.cos(t))


def test_settings_and_solve_arguments_build_the_same_block():
    settings = SolverSettings(method="rk4", controller=FixedGrid(step_size=0.25))
    block = ODEBlock(Decay(), (0.0, 1.0), settings)
    assert ODEBlock(Decay(), (0.0, 1.0), method="rk4", options={"step_size": 0.25}, adjoint=False).solver == settings
    block(torch.ones(2, dtype=torch.float64))
    assert block.nfe_forward == 4 * 4  # four RK4 steps of four stages


def test_ode_blocks_and_total_nfe_find_nested_blocks():
    model = nn.Sequential(ODEBlock(Decay(), adjoint=False), nn.Identity(), ODEBlock(Decay(), adjoint=False))
    assert ode_blocks(model) == [model[0], model[2]]
    assert total_nfe(model) == (0, 0)
    model(torch.ones(2, dtype=torch.float64))
    assert total_nfe(model)[0] == model[0].nfe_forward + model[2].nfe_forward > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(t_span=(1.0, 1.0)), "t_span must be two finite, distinct"),
        (dict(t_span=(0.0,)), "t_span must be a pair"),
        (dict(rtol=-1e-3), "rtol must be >= 0"),
        (dict(atol=-1e-3), "atol must be >= 0"),
        (dict(rtol=0.0, atol=0.0), "rtol and atol are both 0"),
        (dict(method="dopri7"), "unknown method 'dopri7'"),
        (dict(method="dopri5", options={"step_size": 0.1}), "step_size"),
        (dict(adjoint=False, adjoint_options={"norm": "seminorm"}), "adjoint_options only apply"),
        (dict(t=torch.zeros(2)), "pass 't' as ODEBlock's own argument"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ODEBlock(Decay(), **kwargs)


def test_func_must_be_a_module():
    with pytest.raises(TypeError, match="func must be an nn.Module"):
        ODEBlock(lambda t, y: -y)
