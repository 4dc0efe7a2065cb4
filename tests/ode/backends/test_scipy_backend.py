"""ScipyBackend.integrate and the shared external layer, called directly (no front door)."""

from __future__ import annotations

import math

import pytest
import torch

from pynodeta.ode.backends import SolverConfig, get_backend
from pynodeta.ode.backends.external import CountingRHS, FlatState
from pynodeta.ode.backends.scipy import SCIPY_METHODS, AutogradJacobian
from pynodeta.ode.errors import MaxStepsReachedError, NonFiniteStateError, StepSizeUnderflowError
from pynodeta.ode.norms import StateNorm
from pynodeta.ode.stats import SolveStats

ROTATION = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
DAMPED = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)


def linear(A):
    """dy/dt = y A^T for a batch of row vectors y: (batch, 2); exact y(t) = y0 expm(A (t - t0))^T."""
    return lambda t, y: y @ A.T.to(y.dtype)


def exact_linear(A, y0, t):
    return torch.stack([y0 @ torch.linalg.matrix_exp(A * (tk - t[0])).T.to(y0.dtype) for tk in t])


def solve(func, y0, t, method="rk45", **config):
    stats = SolveStats()
    config = {"rtol": 1e-9, "atol": 1e-11, **config}
    ys = get_backend("scipy").integrate(func, y0, t, SolverConfig(method=method, **config), stats)
    return ys, stats


Y0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=torch.float64)


@pytest.mark.parametrize("method", sorted(SCIPY_METHODS))
@pytest.mark.parametrize("direction", [1, -1], ids=["forward", "backward"])
def test_matches_the_matrix_exponential(method, direction):
    t = torch.linspace(0.0, 2.0, 6, dtype=torch.float64)
    t = t.flip(0) if direction < 0 else t
    ys, _ = solve(linear(DAMPED), Y0, t, method)
    assert ys.shape == (6, 2, 2)
    assert torch.equal(ys[0], Y0)
    tolerance = 1e-5 if method in ("bdf", "lsoda") else 1e-6
    torch.testing.assert_close(ys, exact_linear(DAMPED, Y0, t), atol=tolerance, rtol=0)


def test_single_output_time_returns_y0_without_calling_func():
    ys, stats = solve(linear(ROTATION), Y0, torch.tensor([0.3], dtype=torch.float64))
    assert torch.equal(ys, Y0.unsqueeze(0)) and stats.nfe == 0


def test_stats_account_for_every_evaluation_and_step():
    t = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    _, stats = solve(linear(ROTATION), Y0, t, "rk45")
    assert stats.backend == "scipy" and stats.method == "rk45"
    assert len(stats.t_evaluated) == stats.nfe
    # RK45: f(t0) and the initial-step probe, then six evaluations per attempted step (FSAL).
    assert stats.nfe == 2 + 6 * stats.n_steps
    assert stats.n_steps == stats.n_accepted + stats.n_rejected
    assert len(stats.step_sizes) == stats.n_accepted
    assert math.isclose(sum(stats.step_sizes), 3.0, rel_tol=1e-12)
    assert min(stats.t_evaluated) >= 0.0 and max(stats.t_evaluated) <= 3.0


def test_float32_state_comes_back_float32_and_accurate():
    y0 = Y0.to(torch.float32)
    t = torch.linspace(0, 1, 3)
    ys, _ = solve(linear(ROTATION), y0, t, "dop853", rtol=1e-6, atol=1e-8)
    assert ys.dtype == torch.float32
    torch.testing.assert_close(ys, exact_linear(ROTATION, y0, t), atol=1e-5, rtol=0)


def test_per_element_tolerances():
    # A tight tolerance on every element gives a tight answer; a wrong-sized one is refused.
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    tight, loose = torch.full((4,), 1e-11, dtype=torch.float64), torch.full((4,), 1e-3, dtype=torch.float64)
    ys_tight, stats_tight = solve(linear(ROTATION), Y0, t, rtol=tight, atol=tight)
    _, stats_loose = solve(linear(ROTATION), Y0, t, rtol=loose, atol=loose)
    torch.testing.assert_close(ys_tight, exact_linear(ROTATION, Y0, t), atol=1e-8, rtol=0)
    assert stats_loose.nfe < stats_tight.nfe
    with pytest.raises(ValueError, match="rtol has 3 elements but the flat state has 4"):
        solve(linear(ROTATION), Y0, t, rtol=torch.ones(3))


def test_max_num_steps_raises_with_the_partial_solution():
    t = torch.linspace(0, 10, 11, dtype=torch.float64)
    with pytest.raises(MaxStepsReachedError, match="max_num_steps=8") as info:
        solve(linear(ROTATION), Y0, t, "rk45", max_num_steps=8)
    err = info.value
    assert 1 <= len(err.t) < len(t) and torch.equal(err.t, t[: len(err.t)])
    assert err.ys.shape == (len(err.t), 2, 2)
    torch.testing.assert_close(err.ys, exact_linear(ROTATION, Y0, err.t), atol=1e-6, rtol=0)
    assert err.t[-1] <= err.t_reached < 10


def test_blow_up_is_a_step_size_underflow_near_the_singularity():
    # dy/dt = y^2, y(0) = 1 has y = 1 / (1 - t), which leaves every float before t = 1.
    with pytest.raises(StepSizeUnderflowError, match="step size underflow at t=") as info:
        solve(lambda t, y: y**2, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 2.0]).double())
    assert 0.99 < info.value.t < 1.01  # the numerical solution blows up within rtol of t = 1


def test_non_finite_derivative_is_reported_with_its_time():
    def func(t, y):
        return torch.full_like(y, float("nan")) if t > 0.5 else -y

    with pytest.raises(NonFiniteStateError, match="func's output is not finite at t="):
        solve(func, Y0, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_wrong_output_shape_names_func():
    with pytest.raises(ValueError, match=r"func must return a tensor shaped like y0 \(2, 2\), got \(4,\)"):
        solve(lambda t, y: y.reshape(-1), Y0, torch.tensor([0.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"method": "euler"}, "unknown method 'euler' for backend 'scipy'"),
        ({"controller": "pi"}, "controller='pi' is not available with backend 'scipy'"),
        ({"min_step": 1e-3}, "min_step is supported by backend 'scipy' with method 'lsoda' only"),
        ({"norm": torch.linalg.vector_norm}, "a custom error norm is not supported by backend 'scipy'"),
        ({"safety": 0.8}, "safety cannot be set with backend 'scipy'"),
        ({"step_size": 0.1}, "step_size is for fixed-grid methods"),
        ({"extra": {"jac": None}}, r"unknown options \['jac'\] for backend 'scipy'"),
        ({"rtol": 1e-16}, "rtol must be >= "),
        ({"atol": -1.0}, "atol must be >= 0, got -1.0"),
    ],
)
def test_unsupported_settings_are_refused(config, message):
    config = {"method": "rk45", **config}
    with pytest.raises(ValueError, match=message):
        get_backend("scipy").integrate(
            linear(ROTATION), Y0, torch.tensor([0.0, 1.0], dtype=torch.float64),
            SolverConfig(**config), SolveStats(),
        )


def test_adjoint_state_norm_is_accepted():
    norm = StateNorm([2, 2], include=[True, False])
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys, _ = solve(linear(ROTATION), Y0, t, norm=norm)
    torch.testing.assert_close(ys, exact_linear(ROTATION, Y0, t), atol=1e-8, rtol=0)


def test_autograd_jacobian_is_exact():
    state = FlatState.of(Y0)
    jacobian = AutogradJacobian(CountingRHS(linear(DAMPED), state, SolveStats()))
    J = torch.as_tensor(jacobian(0.0, state.to_numpy(Y0)))
    # d vec(y A^T) / d vec(y) for row-major y: (batch, 2) is I_batch (x) A.
    torch.testing.assert_close(J, torch.kron(torch.eye(2, dtype=torch.float64), DAMPED), atol=0, rtol=0)
    assert jacobian.use_autograd


def test_jacobian_falls_back_to_differences_when_func_calls_autograd():
    weight = DAMPED.clone().requires_grad_(True)

    def augmented(t, z):  # like the adjoint's augmented system: autograd.grad inside func
        with torch.enable_grad():
            y = z[:2].detach().requires_grad_(True)
            f = y @ weight.T
            (vjp,) = torch.autograd.grad(f, y, -z[2:])
        return torch.cat([f.detach(), vjp])

    z0 = torch.tensor([1.0, 0.5, 0.2, -0.3], dtype=torch.float64)
    state = FlatState.of(z0)
    jacobian = AutogradJacobian(CountingRHS(augmented, state, SolveStats()))
    J = torch.as_tensor(jacobian(0.0, state.to_numpy(z0)))
    expected = torch.block_diag(DAMPED, -DAMPED.T)
    torch.testing.assert_close(J, expected, atol=1e-6, rtol=0)
    assert not jacobian.use_autograd


def test_stiff_problem_with_implicit_methods():
    # Van der Pol, mu = 1000, on [0, 1] (stiff): the implicit methods agree with a tight Radau reference
    # in a few hundred evaluations, Jacobians included.
    mu = 1000.0

    def vdp(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ref, _ = solve(vdp, y0, t, "radau", rtol=1e-10, atol=1e-12)
    for method in ("radau", "bdf", "lsoda"):
        ys, stats = solve(vdp, y0, t, method, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(ys[-1], ref[-1], atol=1e-4, rtol=1e-4)
        assert stats.nfe < 1000
