"""Gradients: gradcheck for every method, adjoint against direct backprop, time gradients, tuple states."""

import pytest
import torch

import pynodeta as pn
from pynodeta.ode import ADAPTIVE_METHODS, METHODS
from pynodeta.ode.problems import MLPField

GEN = torch.Generator().manual_seed(0)


def _field(t, y, weight, bias):
    """A small non-autonomous nonlinear field with explicit parameters: tanh(y W^T + t b)."""
    return torch.tanh(y @ weight.T + t * bias)


def _inputs(requires_grad=True):
    y0 = torch.randn(3, 2, dtype=torch.float64, generator=GEN)
    weight = torch.randn(2, 2, dtype=torch.float64, generator=GEN)
    bias = torch.randn(2, dtype=torch.float64, generator=GEN)
    return [x.requires_grad_(requires_grad) for x in (y0, weight, bias)]


T = torch.tensor([0.0, 0.4, 0.8], dtype=torch.float64)


def _solve(name, y0, weight, bias, **kwargs):
    return pn.solve(lambda t, y: _field(t, y, weight, bias), y0, T, method=name, **kwargs).ys


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradcheck_every_method(name):
    """Backprop through the solver is the exact derivative of the discrete solution (float64 gradcheck).

    Adaptive methods run with their step pinned (huge tolerances, max_step) so the discrete scheme is
    fixed; step sizes are detached by design (as in diffrax), so this is exactly what backprop computes.
    """
    if METHODS[name].adaptive:
        kwargs = dict(controller=pn.IController(rtol=1e6, atol=1e6, first_step=0.1, max_step=0.1))
    else:
        kwargs = dict(controller=pn.FixedGrid(step_size=0.1))
    assert torch.autograd.gradcheck(lambda *x: _solve(name, *x, **kwargs), tuple(_inputs()), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", ["dopri5", "tsit5", "rk4"])
def test_gradcheck_adjoint(name):
    """The adjoint solves its own backward ODE, so it matches finite differences up to the solver error."""
    tight = pn.IController(rtol=1e-11, atol=1e-11) if METHODS[name].adaptive else pn.FixedGrid(step_size=0.01)

    def run(y0, weight, bias):
        return _solve(name, y0, weight, bias, adjoint=pn.Adjoint(params=(weight, bias)), controller=tight)

    assert torch.autograd.gradcheck(run, tuple(_inputs()), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["dopri5", "tsit5"])
def test_gradcheck_output_times(name):
    """Time gradients follow the exact flow and agree with finite differences at tight tolerance."""
    y0, weight, bias = _inputs(requires_grad=False)
    t = T.clone().requires_grad_(True)
    for adjoint in (False, True):
        kwargs = dict(adjoint=pn.Adjoint(params=())) if adjoint else {}

        def run(times, kwargs=kwargs):
            return pn.solve(lambda tt, y: _field(tt, y, weight, bias), y0, times, method=name,
                            controller=pn.IController(rtol=1e-11, atol=1e-11), **kwargs).ys

        assert torch.autograd.gradcheck(run, (t,), atol=1e-5, rtol=1e-4)


def test_second_derivatives_through_time_gradients_are_refused_and_without_t_they_are_exact():
    """dL/dt comes from the exact-flow formula, not from differentiating the steps in t: a backward through
    it that records a graph (create_graph=True) is refused by name; with t detached, second derivatives
    with respect to y0 and the weights are backprop's own, and agree with finite differences."""
    y0, weight, bias = _inputs()

    def run(times, y0, weight):
        return pn.solve(lambda tt, y: _field(tt, y, weight, bias.detach()), y0, times,
                        controller=pn.IController(rtol=1e-12, atol=1e-12)).ys

    t = T.clone().requires_grad_(True)
    loss = run(t, y0, weight).square().sum()
    with pytest.raises(RuntimeError, match=r"create_graph=True .* t requires grad is not supported.*t\.detach\(\)"):
        torch.autograd.grad(loss, (t, weight), create_graph=True)
    (grad_t,) = torch.autograd.grad(run(t, y0, weight).square().sum(), t)  # first order: unaffected
    assert torch.isfinite(grad_t).all()
    assert torch.autograd.gradgradcheck(lambda y0, weight: run(T, y0, weight), (y0, weight), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seminorm", [False, True], ids=["mixed-norm", "seminorm"])
@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_adjoint_matches_direct_backprop(name, seminorm):
    """Both are accurate to the solver tolerance, so they agree to a small multiple of it."""
    # dopri8 takes long steps, and its dense output (torchdiffeq's quartic) is only 4th order
    tol = {"dopri5": 1e-10, "tsit5": 1e-10, "dopri8": 1e-6, "bosh3": 1e-8, "adaptive_heun": 1e-6,
           "fehlberg2": 1e-6}[name]
    # fehlberg2's error estimate (weights +-1/512) underrates its error ~1e3-fold, in torchdiffeq too
    slack = 10.0 if name == "fehlberg2" else 1.0
    field = MLPField(dim=2, hidden=8, dtype=torch.float64)
    y0 = torch.randn(4, 2, dtype=torch.float64, generator=GEN, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.2], dtype=torch.float64, requires_grad=True)
    params = [y0, t, *field.parameters()]

    def grads(adjoint: bool):
        gradient_mode = pn.Adjoint(norm="seminorm" if seminorm else "mixed") if adjoint else False
        ys = pn.solve(field, y0, t, method=name, controller=pn.IController(rtol=tol, atol=tol),
                      adjoint=gradient_mode).ys
        return torch.autograd.grad(ys.square().sum(), params)

    for direct, adjoint in zip(grads(False), grads(True)):
        assert torch.allclose(direct, adjoint, rtol=1e4 * tol * slack, atol=1e3 * tol * slack)


def test_seminorm_takes_fewer_backward_evaluations():
    field = MLPField(dim=2, hidden=16, scale=2.5)
    y0 = torch.randn(16, 2, generator=GEN)
    t = torch.tensor([0.0, 1.0])
    nfe = {}
    for norm in ("mixed", "seminorm"):
        sol = pn.solve(field, y0, t, controller=pn.IController(rtol=1e-5, atol=1e-7), adjoint=pn.Adjoint(norm=norm))
        sol.ys.sum().backward()
        nfe[norm] = sol.stats.nfe_adjoint
    assert 0 < nfe["seminorm"] < nfe["mixed"]


def test_time_gradient_matches_exact_formula():
    """dL/dt_end = <dL/dy, f(t_end, y_end)> and dL/dt_0 = -<dL/dy0 (through the flow), f(t_0, y_0)>."""
    decay = torch.tensor([0.7, 1.3], dtype=torch.float64)

    def f(t, y):
        return -decay * y

    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    for adjoint in (False, True):
        t = torch.tensor([0.2, 1.0], dtype=torch.float64, requires_grad=True)
        kwargs = dict(adjoint=pn.Adjoint(params=())) if adjoint else {}
        ys = pn.solve(f, y0, t, controller=pn.IController(rtol=1e-12, atol=1e-12), **kwargs).ys
        (grad_t,) = torch.autograd.grad(ys[-1].sum(), t)
        span = float(t[1].detach() - t[0].detach())
        # y_end = y0 exp(-k (t1 - t0)) => d/dt1 = -k y_end, d/dt0 = +k y_end
        expected_end = float((-decay * y0 * torch.exp(-decay * span)).sum())
        assert grad_t[1].item() == pytest.approx(expected_end, rel=1e-8)
        assert grad_t[0].item() == pytest.approx(-expected_end, rel=1e-8)


def test_tuple_state_gradients_adjoint_equals_direct():
    weight = torch.tensor([[0.0, 1.0], [-1.0, -0.2]], dtype=torch.float64, requires_grad=True)

    def oscillator(t, state):
        x, v = state
        d = torch.stack([x, v], -1) @ weight.T
        return d[..., 0], d[..., 1]

    x0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    v0 = torch.tensor([0.0, 0.3], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 2, 4, dtype=torch.float64)

    def grads(adjoint: bool):
        kwargs = dict(adjoint=pn.Adjoint(params=(weight,))) if adjoint else {}
        xs, vs = pn.solve(oscillator, (x0, v0), t, controller=pn.IController(rtol=1e-10, atol=1e-10), **kwargs).ys
        return torch.autograd.grad((xs**2).sum() + vs.sum(), (x0, v0, weight))

    for direct, adjoint in zip(grads(False), grads(True)):
        assert torch.allclose(direct, adjoint, rtol=1e-6, atol=1e-8)


def test_adjoint_needs_parameters_or_a_module():
    y0 = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="adjoint_params"):
        pn.solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), adjoint=True)


def test_adjoint_statistics_fill_in_on_backward():
    field = MLPField()
    y0 = torch.randn(8, 2, generator=GEN, requires_grad=True)
    sol = pn.solve(field, y0, torch.tensor([0.0, 0.5, 1.0]), controller=pn.IController(rtol=1e-5, atol=1e-6),
                   adjoint=True)
    assert sol.stats.nfe > 0 and sol.stats.nfe_adjoint == 0
    sol.ys.sum().backward()
    assert sol.stats.nfe_adjoint == len(sol.stats.t_evaluated_adjoint) > 0
    # the backward solves start at t=1 and run towards 0 (the last step may overshoot 0, like the forward
    # solve overshoots its end and interpolates), never beyond t=1
    assert sol.stats.t_evaluated_adjoint[0] == 1.0
    assert max(sol.stats.t_evaluated_adjoint) <= 1.0
    assert all(p.grad is not None for p in field.parameters())


def test_adjoint_flags_backward_solve_for_layers():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(-1.0))

        def forward(self, t, y):
            seen.append(pn.ode.is_adjoint_backward())
            return self.w * y

    sol = pn.solve(Probe(), torch.ones(2, requires_grad=True), torch.tensor([0.0, 1.0]), adjoint=True)
    n_forward = len(seen)
    sol.ys.sum().backward()
    assert not any(seen[:n_forward]) and all(seen[n_forward:])
