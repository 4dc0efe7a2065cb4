"""With dopri5 and default options pynodeta takes exactly torchdiffeq 0.2.5's steps."""

import pytest
import torch

import pynodeta as pn
from pynodeta.ode.problems import MLPField, lotka_volterra, van_der_pol

torchdiffeq = pytest.importorskip("torchdiffeq")


class Counted(torch.nn.Module):
    def __init__(self, func):
        super().__init__()
        self.func, self.times = func, []

    def forward(self, t, y):
        self.times.append(float(t.detach()))
        return self.func(t, y)


def _compare(func, y0, t, rtol, atol, options=None, result_atol=1e-12, times_rel=1e-6, result_rtol=0.0):
    theirs = Counted(func)
    with torch.no_grad():
        expected = torchdiffeq.odeint(theirs, y0, t, rtol=rtol, atol=atol, method="dopri5", options=options)
        sol = pn.solve(func, y0, t, **pn.SolverSettings.from_arguments(rtol=rtol, atol=atol, method="dopri5",
                                                                         options=options))
    assert sol.stats.nfe == len(theirs.times)
    assert sol.stats.t_evaluated == pytest.approx(theirs.times, rel=times_rel, abs=times_rel)
    assert torch.allclose(sol.ys, expected, rtol=result_rtol, atol=result_atol)
    return sol


F64_CASES = {
    "van der pol": (van_der_pol(2.0), torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)),
    "lotka-volterra": (lotka_volterra, torch.tensor([2.0, 1.0], dtype=torch.float64)),
    "neural field": (MLPField(dim=3, hidden=32, scale=2.5, dtype=torch.float64),
                     torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))),
}


@pytest.mark.parametrize("case", sorted(F64_CASES))
@pytest.mark.parametrize("tolerances", [(1e-5, 1e-7), (1e-8, 1e-10)])
def test_same_steps_and_results_in_float64(case, tolerances):
    func, y0 = F64_CASES[case]
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    _compare(func, y0, t, *tolerances, result_atol=1e-10)


@pytest.mark.parametrize("case", sorted(F64_CASES))
def test_same_steps_backwards_in_time(case):
    func, y0 = F64_CASES[case]
    t = torch.tensor([2.0, 1.3, 0.0], dtype=torch.float64)
    _compare(func, y0, t, 1e-6, 1e-8, result_atol=1e-10)


def test_same_steps_for_a_float32_neural_field():
    """float32 state, float64 time: the same steps, up to the float32 round-off of the error estimate
    (a cancelling sum of stages whose summation order differs between the two libraries)."""
    field = MLPField(dim=2, hidden=64, scale=2.5)
    y0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    sol = _compare(field, y0, torch.tensor([0.0, 5.0]), 1e-3, 1e-4, result_atol=1e-4, times_rel=1e-3,
                   result_rtol=1e-4)
    assert sol.stats.nfe > 20


def test_same_nfe_for_a_float32_field_at_round_off_level_tolerance():
    """At rtol 1e-5 a float32 error estimate is ~1e-9 |y|, i.e. round-off: individual step sizes then depend
    on summation order (torchdiffeq sums stacked stages, pynodeta chains adds), so only the NFE and the
    solution to tolerance are compared."""
    field = MLPField(dim=2, hidden=64, scale=2.5)
    y0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 5.0])
    theirs = Counted(field)
    with torch.no_grad():
        expected = torchdiffeq.odeint(theirs, y0, t, rtol=1e-5, atol=1e-7)
        sol = pn.solve(field, y0, t, controller=pn.IController(rtol=1e-5, atol=1e-7))
    assert sol.stats.nfe == len(theirs.times)
    assert torch.allclose(sol.ys, expected, rtol=1e-4, atol=1e-4)


def test_same_steps_with_first_step_and_max_step():
    func, y0 = F64_CASES["van der pol"]
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    _compare(func, y0, t, 1e-6, 1e-8, options={"first_step": 0.01, "max_step": 0.1}, result_atol=1e-10)


def test_same_steps_for_tuple_states():
    def field(t, state):  # parts of different sizes, so the mixed (per-part) norm is exercised
        x, v = state
        return torch.cat([v, 0.5 * v]), -x.sum(0, keepdim=True) - 0.1 * v + torch.sin(t)

    y0 = (torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    theirs = Counted(field)
    t = torch.linspace(0, 4, 5, dtype=torch.float64)
    expected = torchdiffeq.odeint(theirs, y0, t, rtol=1e-7, atol=1e-9)
    sol = pn.solve(field, y0, t, controller=pn.IController(rtol=1e-7, atol=1e-9))
    assert sol.stats.nfe == len(theirs.times)
    for ours, reference in zip(sol.ys, expected):
        assert torch.allclose(ours, reference, atol=1e-12)


def test_adjoint_backward_matches_torchdiffeq_with_the_default_norm():
    """Same augmented system and norm, so the same backward steps and gradients to round-off."""
    field = MLPField(dim=2, hidden=16, scale=2.0, dtype=torch.float64)
    y0 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    counted = Counted(field)
    ys = torchdiffeq.odeint_adjoint(counted, y0, t, rtol=1e-6, atol=1e-8)
    n_forward = len(counted.times)
    expected = torch.autograd.grad(ys.square().sum(), (y0, *field.parameters()))
    sol = pn.solve(field, y0, t, controller=pn.IController(rtol=1e-6, atol=1e-8), adjoint=True)
    grads = torch.autograd.grad(sol.ys.square().sum(), (y0, *field.parameters()))
    assert sol.stats.nfe == n_forward
    assert sol.stats.nfe_adjoint <= len(counted.times) - n_forward
    for ours, reference in zip(grads, expected):
        assert torch.allclose(ours, reference, rtol=1e-6, atol=1e-8)


def _float64_field(t, y):
    """dy/dt in float64 whatever y's dtype: a float64 constant promotes a float32 state."""
    return torch.tensor([-1.0, 0.5], dtype=torch.float64) * y + 0.25 * y.flip(-1)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "euler", "implicit_adams"])
def test_a_float64_derivative_keeps_a_float32_state_float32_as_torchdiffeq(method):
    """Such a func used to turn the whole solution into float64; torchdiffeq returns y0's dtype."""
    y0, t = torch.tensor([1.0, 2.0]), torch.linspace(0.0, 1.0, 5)
    options = None if method == "dopri5" else {"step_size": 0.125}
    expected = torchdiffeq.odeint(_float64_field, y0, t, method=method, options=options, rtol=1e-5, atol=1e-7)
    ys = pn.odeint(_float64_field, y0, t, method=method, options=options, rtol=1e-5, atol=1e-7)
    assert ys.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(ys, expected, rtol=1e-5, atol=1e-6)
    batched = pn.solve(_float64_field, y0.expand(3, 2), t, batched=True,
                       controller=pn.IController(rtol=1e-5, atol=1e-7)).ys
    assert batched.dtype == torch.float32


def test_the_derivative_dtype_is_checked_once_per_solve():
    """Matching dtypes: after the first evaluation the solver calls func itself (no per-step wrapper);
    a non-floating dy/dt is refused naming both dtypes."""
    from pynodeta.ode.backends.rk_parts import RHSCaller
    from pynodeta.ode.stats import SolveStats

    y = torch.ones(2)
    call = RHSCaller(lambda t, y: -y, y, 1.0, SolveStats(method="rk4", backend="torch"))
    call(0.0, y)
    assert call.func is call.user_func
    call = RHSCaller(_float64_field, y, 1.0, SolveStats(method="rk4", backend="torch"))
    assert call(0.0, y).dtype == torch.float32 and call(0.1, y).dtype == torch.float32
    with pytest.raises(TypeError, match="dy/dt of dtype torch.int64 for a state y of dtype torch.float32"):
        pn.odeint(lambda t, y: torch.zeros_like(y, dtype=torch.long), y, torch.linspace(0.0, 1.0, 3))
