"""The contract every backend keeps, checked through ``pn.solve`` for torch, scipy and julia.

The julia cases need Julia and juliacall; they run only with ``PYNODETA_TEST_JULIA=1``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import pynodeta as pn
from pynodeta.ode.errors import MaxStepsReachedError, NonFiniteStateError, StepSizeUnderflowError

# backend -> (explicit method with dopri5-like accuracy, stiff method or None)
METHODS = {"torch": ("dopri5", None), "scipy": ("rk45", "radau"), "julia": ("tsit5", "rodas5")}


def backend_param(name: str):
    if name != "julia":
        return pytest.param(name, id=name)
    skip = pytest.mark.skipif(
        os.environ.get("PYNODETA_TEST_JULIA") != "1",
        reason="needs Julia and juliacall (see README); set PYNODETA_TEST_JULIA=1 to run",
    )
    return pytest.param(name, id=name, marks=[pytest.mark.julia, skip])


BACKENDS = [backend_param(name) for name in METHODS]
STIFF_BACKENDS = [backend_param(name) for name, (_, stiff) in METHODS.items() if stiff is not None]
EXTERNAL_BACKENDS = [backend_param(name) for name in METHODS if name != "torch"]


class Linear(torch.nn.Module):
    """dy/dt = y A^T (batch of row vectors, y: (batch, 3)); exact y(t) = y0 expm(A (t - t0))^T."""

    def __init__(self):
        super().__init__()
        A = [[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.5]]
        self.A = torch.nn.Parameter(torch.tensor(A, dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.A.T

    def exact(self, y0, t):
        return torch.stack([y0 @ torch.linalg.matrix_exp(self.A.detach() * (tk - t[0])).T for tk in t])


Y0 = torch.tensor([[1.0, 0.0, -0.5], [0.2, 0.7, 0.1]], dtype=torch.float64)


def solve(backend, func, y0, t, stiff=False, **kwargs):
    method = METHODS[backend][1 if stiff else 0]
    kwargs = {"controller": pn.IController(rtol=1e-8, atol=1e-10), **kwargs}
    return pn.solve(func, y0, t, method=method, backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("times", [[0.0, 0.5, 1.5, 3.0], [3.0, 1.0, -1.0]], ids=["increasing", "decreasing"])
def test_matches_the_exact_solution_at_the_output_times(backend, times):
    func, t = Linear(), torch.tensor(times, dtype=torch.float64)
    sol = solve(backend, func, Y0, t)
    assert sol.ys.shape == (len(t), *Y0.shape) and sol.ys.dtype == Y0.dtype
    assert torch.equal(sol.ys[0], Y0)
    torch.testing.assert_close(sol.ys, func.exact(Y0, t), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tuple_state_round_trips(backend):
    def func(t, state):
        x, v = state
        return v, -x

    x0, v0 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    xs, vs = solve(backend, func, (x0, v0), t).ys
    torch.testing.assert_close(xs[-1], x0 * math.cos(1) + v0 * math.sin(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(vs[-1], -x0 * math.sin(1) + v0 * math.cos(1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_are_populated(backend):
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    stats = solve(backend, Linear(), Y0, t).stats
    assert stats.backend == backend and stats.nfe > 0
    assert len(stats.t_evaluated) == stats.nfe
    assert stats.t_evaluated[0] == 0.0
    assert stats.n_steps == stats.n_accepted + stats.n_rejected > 0
    assert len(stats.step_sizes) == stats.n_accepted
    # Accepted steps cover the interval (the torch backend, like torchdiffeq, may step past the end
    # and interpolate back, so this is >= rather than ==).
    assert sum(stats.step_sizes) >= 2.0 - 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_tighter_tolerance_costs_more_and_is_more_accurate(backend):
    func, t = Linear(), torch.tensor([0.0, 3.0], dtype=torch.float64)
    loose = solve(backend, func, Y0, t, controller=pn.IController(rtol=1e-4, atol=1e-6))
    tight = solve(backend, func, Y0, t, controller=pn.IController(rtol=1e-9, atol=1e-11))
    exact = func.exact(Y0, t)
    assert tight.stats.nfe > loose.stats.nfe
    assert (tight.ys - exact).abs().max() < (loose.ys - exact).abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_num_steps_keeps_the_partial_solution(backend):
    func, t = Linear(), torch.linspace(0, 20, 21, dtype=torch.float64)
    with pytest.raises(MaxStepsReachedError) as info:
        solve(backend, func, Y0, t, max_steps=10)
    err = info.value
    assert 1 <= len(err.t) < len(t) and torch.equal(err.t, t[: len(err.t)])
    torch.testing.assert_close(err.ys, func.exact(Y0, err.t), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blow_up_is_reported_near_the_singularity(backend):
    # dy/dt = y^2, y(0) = 1: y = 1 / (1 - t) leaves every float before t = 1.
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    with pytest.raises((StepSizeUnderflowError, NonFiniteStateError)) as info:
        solve(backend, lambda t, y: y**2, torch.ones(1, dtype=torch.float64), t,
              controller=pn.IController(rtol=1e-6, atol=1e-8))
    assert 0.99 < info.value.t < 1.01  # the numerical solution blows up within rtol of t = 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_func_is_a_non_finite_state_error(backend):
    def func(t, y):
        return torch.full_like(y, float("nan")) if t > 0.5 else -y

    with pytest.raises(NonFiniteStateError, match="not finite at t="):
        solve(backend, func, Y0, torch.tensor([0.0, 1.0], dtype=torch.float64))


ADJOINT_CASES = [pytest.param(p.values[0], False, id=f"{p.id}-explicit", marks=p.marks) for p in BACKENDS] + [
    pytest.param(p.values[0], True, id=f"{p.id}-implicit", marks=p.marks) for p in STIFF_BACKENDS
]


@pytest.mark.parametrize(("backend", "stiff"), ADJOINT_CASES)
@pytest.mark.parametrize("seminorm", [False, True], ids=["mixed-norm", "seminorm"])
def test_adjoint_gradients_match_direct_backprop(backend, stiff, seminorm):
    func = Linear()
    y0 = Y0.clone().requires_grad_(True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    weights = torch.linspace(-1, 1, 18, dtype=torch.float64).reshape(3, 2, 3)
    sol = solve(backend, func, y0, t, stiff=stiff, adjoint=pn.Adjoint(norm="seminorm" if seminorm else "mixed"))
    (sol.ys * weights).sum().backward()
    # Reference: backprop through the torch backend's dopri5 at a tight tolerance.
    reference = Linear()
    y0_ref = Y0.clone().requires_grad_(True)
    ys_ref = pn.solve(reference, y0_ref, t, method="dopri5", controller=pn.IController(rtol=1e-10, atol=1e-12)).ys
    (ys_ref * weights).sum().backward()
    torch.testing.assert_close(y0.grad, y0_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(func.A.grad, reference.A.grad, atol=1e-5, rtol=1e-5)
    assert sol.stats.nfe_adjoint > 0 and len(sol.stats.t_evaluated_adjoint) == sol.stats.nfe_adjoint


@pytest.mark.parametrize("backend", EXTERNAL_BACKENDS)
def test_gradient_without_adjoint_is_refused(backend):
    y0 = Y0.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="pass adjoint=True"):
        solve(backend, Linear(), y0, torch.tensor([0.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("backend", STIFF_BACKENDS)
def test_stiff_van_der_pol_with_the_implicit_method(backend):
    mu = 1000.0

    def vdp(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    y0, t = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    reference = pn.solve(vdp, y0, t, method="radau", backend="scipy",
                         controller=pn.IController(rtol=1e-11, atol=1e-12)).ys
    sol = solve(backend, vdp, y0, t, stiff=True, controller=pn.IController(rtol=1e-6, atol=1e-8))
    torch.testing.assert_close(sol.ys[-1], reference[-1], atol=1e-4, rtol=1e-4)
    assert sol.stats.nfe < 2000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", EXTERNAL_BACKENDS)
def test_cuda_state_comes_back_on_the_device(backend):
    func = Linear().cuda()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, device="cuda")
    sol = solve(backend, func, Y0.cuda(), t)
    assert sol.ys.device.type == "cuda"
    torch.testing.assert_close(sol.ys.cpu(), func.cpu().exact(Y0, t.cpu()), atol=1e-6, rtol=0)
