"""Gradients of per-sample solves: direct backprop (gradcheck), the per-sample adjoint against direct backprop
and finite differences, and batch independence of the gradients."""

import pytest
import torch

import pynodeta as pn

F64 = torch.float64
GEN = torch.Generator().manual_seed(0)
WEIGHT = torch.randn(2, 2, generator=GEN, dtype=F64) * 0.7
BIAS = torch.randn(2, generator=GEN, dtype=F64) * 0.3
Y0 = torch.randn(3, 2, generator=GEN, dtype=F64)
T = torch.tensor([[0.0, 0.4, 1.0], [0.2, 0.9, 1.3], [1.0, 0.5, -0.2]], dtype=F64)


def field(t, y, weight, bias):
    """A small nonlinear, non-autonomous field; t: (batch,)."""
    return torch.tanh(y @ weight.T + bias) * torch.cos(t)[:, None]


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(WEIGHT.clone()), torch.nn.Parameter(BIAS.clone())

    def forward(self, t, y):
        return field(t, y, self.weight, self.bias)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_gradcheck_direct(method):
    """Backprop through the per-sample solver is the exact derivative of the discrete solution: steps pinned
    by huge tolerances and max_step (step sizes are not differentiated, by design)."""

    def run(y0, weight, bias):
        return pn.solve(lambda t, y: field(t, y, weight, bias), y0, T, method=method, batched=True,
                        controller=pn.IController(rtol=1e6, atol=1e6, first_step=0.3, max_step=0.3)).ys

    inputs = tuple(x.clone().requires_grad_(True) for x in (Y0, WEIGHT, BIAS))
    assert torch.autograd.gradcheck(run, inputs, atol=1e-8, rtol=1e-6)


@pytest.mark.slow
def test_gradcheck_adjoint():
    """The adjoint integrates its own backward ODE per sample: it matches finite differences to tolerance."""

    def run(y0, weight, bias):
        return pn.solve(lambda t, y: field(t, y, weight, bias), y0, T[:2, ::2], batched=True,
                        controller=pn.IController(rtol=1e-9, atol=1e-11), adjoint=pn.Adjoint(params=(weight, bias))).ys

    inputs = tuple(x.clone().requires_grad_(True) for x in (Y0[:2], WEIGHT, BIAS))
    assert torch.autograd.gradcheck(run, inputs, atol=1e-6, rtol=1e-5)


def _gradients(adjoint, func, y0, t, **kwargs):
    y0 = y0.clone().requires_grad_(True)
    sol = pn.solve(func, y0, t, batched=True, adjoint=adjoint, **kwargs)
    loss = sol.ys.square().sum() + sol.ys[:, 1].sum()
    return torch.autograd.grad(loss, (y0, *func.parameters())), sol.stats


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_adjoint_matches_direct(method):
    func = Field()
    tol = 1e-9 if pn.METHODS[method].order >= 5 else 1e-7
    direct, _ = _gradients(False, func, Y0, T, method=method, controller=pn.IController(rtol=tol, atol=tol * 1e-2))
    adjoint, stats = _gradients(True, func, Y0, T, method=method, controller=pn.IController(rtol=tol, atol=tol * 1e-2))
    for d, a in zip(direct, adjoint):
        assert torch.allclose(d, a, rtol=1e4 * tol, atol=100 * tol)
    assert stats.nfe_adjoint > 0 and (stats.nfe_adjoint_per_sample > 0).all()


def test_adjoint_takes_backward_steps_per_sample():
    """A sample whose dynamics are fast gets more backward steps than a slow one, and the backward of a sample
    solved alone takes the same steps as in its batch; the input gradients agree exactly."""

    class Scaled(torch.nn.Module):
        def __init__(self, rates):
            super().__init__()
            self.inner, self.rates = Field(), rates

        def forward(self, t, y):
            return self.rates[:, None] * self.inner(t, y)

    rates = torch.tensor([0.1, 1.0, 8.0], dtype=F64)
    (grad_y0, *_), stats = _gradients(True, Scaled(rates), Y0, T, controller=pn.IController(rtol=1e-7, atol=1e-9))
    backward = stats.nfe_adjoint_per_sample
    assert backward[2] > backward[0]
    for b in range(3):
        (alone, *_), solo = _gradients(True, Scaled(rates[b : b + 1]), Y0[b : b + 1], T[b : b + 1],
                                       controller=pn.IController(rtol=1e-7, atol=1e-9))
        assert torch.allclose(alone[0], grad_y0[b], rtol=0, atol=1e-13)
        assert solo.nfe_adjoint_per_sample[0] == backward[b]


def test_adjoint_with_typed_parts_and_seminorm():
    func = Field()
    adjoint = pn.Adjoint(norm="seminorm", controller=pn.IController(rtol=1e-9, atol=1e-11))
    direct, _ = _gradients(False, func, Y0, T, controller=pn.IController(rtol=1e-9, atol=1e-11))
    typed, _ = _gradients(adjoint, func, Y0, T, controller=pn.IController(rtol=1e-9, atol=1e-11))
    for d, a in zip(direct, typed):
        assert torch.allclose(d, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("adjoint", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["direct", "adjoint"])
def test_gradcheck_output_times(adjoint):
    """Per-sample time gradients follow the exact flow (the shared-step mode's formulas), per sample."""
    y0 = Y0[:2]
    kwargs = dict(adjoint=pn.Adjoint(params=())) if adjoint else {}

    def run(times):
        return pn.solve(lambda t, y: field(t, y, WEIGHT, BIAS), y0, times, batched=True,
                        controller=pn.IController(rtol=1e-9, atol=1e-11), **kwargs).ys

    assert torch.autograd.gradcheck(run, (T[:2].clone().requires_grad_(True),), atol=1e-5, rtol=1e-4)


def test_second_derivatives_through_per_sample_time_gradients_are_refused_by_name():
    t, y0 = T[:2].clone().requires_grad_(True), Y0[:2].clone().requires_grad_(True)
    ys = pn.solve(lambda t, y: field(t, y, WEIGHT, BIAS), y0, t, batched=True).ys
    with pytest.raises(RuntimeError, match=r"create_graph=True .* t requires grad is not supported"):
        torch.autograd.grad(ys.square().sum(), (t, y0), create_graph=True)
