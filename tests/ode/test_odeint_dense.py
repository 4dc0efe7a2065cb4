"""odeint_dense: the continuous solution of one solve, as torchdiffeq 0.2.5's."""

import math

import pytest
import torch

import pynodeta as pn


def oscillator(t, y):
    """y'' = -y as a first-order system: y(t) = (cos t, -sin t) from (1, 0)."""
    return torch.stack([y[1], -y[0]])


Y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)


def test_matches_the_closed_form_at_many_times():
    dense = pn.odeint_dense(oscillator, Y0, 0.0, 5.0, rtol=1e-9, atol=1e-11)
    t = torch.linspace(0.0, 5.0, 101, dtype=torch.float64)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], dim=1)
    assert dense(t).shape == (101, 2)
    assert torch.allclose(dense(t), exact, atol=1e-8, rtol=0)
    # between steps too: the dense output is 4th order, not a straight line between step ends
    assert dense.stats.n_accepted < 100


def test_backwards_in_time():
    dense = pn.odeint_dense(oscillator, Y0, 2.0, -1.0, rtol=1e-9, atol=1e-11)
    for t in (2.0, 1.234, 0.0, -1.0):
        exact = torch.tensor([math.cos(t - 2.0), -math.sin(t - 2.0)], dtype=torch.float64)
        assert torch.allclose(dense(t), exact, atol=1e-8, rtol=0)


def test_equals_odeint_at_the_same_times():
    """odeint's outputs come from the same steps and the same dense weights: the two agree bit for bit."""
    t = torch.linspace(0.0, 3.0, 17, dtype=torch.float64)
    ys = pn.odeint(oscillator, Y0, t, rtol=1e-6, atol=1e-8)
    dense = pn.odeint_dense(oscillator, Y0, t[0], t[-1], rtol=1e-6, atol=1e-8)
    assert torch.equal(dense(t), ys)


def test_scalar_times_give_the_state_shape():
    dense = pn.odeint_dense(oscillator, Y0, torch.tensor(0.0), torch.tensor(1.0))
    assert dense(0.5).shape == (2,)
    assert dense(torch.tensor(0.5)).shape == (2,)
    assert torch.equal(dense(0.0), Y0)


def test_agrees_with_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    zero, five = torch.tensor(0.0, dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64)
    theirs = torchdiffeq.odeint_dense(oscillator, Y0, zero, five, rtol=1e-8, atol=1e-10)
    ours = pn.odeint_dense(oscillator, Y0, zero, five, rtol=1e-8, atol=1e-10)
    for t in torch.linspace(0.0, 4.99, 37, dtype=torch.float64):
        assert torch.allclose(ours(t), theirs(t), atol=1e-12, rtol=0)


def test_gradient_with_respect_to_y0_is_the_flow_derivative():
    """y' = -2y: y(t) = y0 exp(-2t), so d y(t) / d y0 = exp(-2t) at every t."""
    y0 = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    dense = pn.odeint_dense(lambda t, y: -2.0 * y, y0, 0.0, 1.0, rtol=1e-9, atol=1e-11)
    for t in (0.3, 0.77, 1.0):
        (grad,) = torch.autograd.grad(dense(t).sum(), y0, retain_graph=True)  # one graph, three reads
        assert torch.allclose(grad, torch.full((2,), math.exp(-2 * t), dtype=torch.float64), rtol=1e-7)


def test_other_adaptive_methods():
    dense = pn.odeint_dense(oscillator, Y0, 0.0, 2.0, rtol=1e-9, atol=1e-11, method="tsit5")
    assert torch.allclose(dense(1.5), torch.tensor([math.cos(1.5), -math.sin(1.5)], dtype=torch.float64),
                          atol=1e-7, rtol=0)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(TypeError, match="single tensor"):
        pn.odeint_dense(lambda t, y: y, (Y0, Y0), 0.0, 1.0)
    with pytest.raises(ValueError, match="adaptive method"):
        pn.odeint_dense(oscillator, Y0, 0.0, 1.0, method="rk4")
    with pytest.raises(ValueError, match="strictly"):
        pn.odeint_dense(oscillator, Y0, 1.0, 1.0)
    dense = pn.odeint_dense(oscillator, Y0, 0.0, 1.0)
    with pytest.raises(ValueError, match="outside the solved interval"):
        dense(1.5)


def test_calls_the_step_callbacks_and_reports_to_record_stats_as_odeint_does():
    """torchdiffeq's odeint_dense runs its solver's loop, which calls func's step callbacks."""

    class Oscillator(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.accepted = []

        def forward(self, t, y):
            return oscillator(t, y)

        def callback_accept_step(self, t0, y0, dt):
            self.accepted.append(float(t0))

    func = Oscillator()
    with pn.record_stats() as solves:
        dense = pn.odeint_dense(func, Y0, 0.0, 2.0)
    assert solves == [dense.stats]
    assert len(func.accepted) == dense.stats.n_accepted > 0
