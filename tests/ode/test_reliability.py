"""The solver never spins forever or misleads: non-finite values, low precision, empty batches, long runs."""

import math
import warnings

import pytest
import torch

import pynodeta as pn
from pynodeta.ode.problems import MLPField, linear_decay, linear_decay_exact

F64 = dict(dtype=torch.float64)
T = torch.tensor([0.0, 1.0, 2.0], **F64)


def nan_after(t_bad: float):
    """-y until t_bad, NaN afterwards: a right-hand side that breaks mid-solve."""

    def f(t, y):
        return -y if float(t) < t_bad else torch.full_like(y, math.nan)

    return f


# --- item 6: NaN with min_step, unvalidated controller constants ---------------------------------

def test_nan_from_func_at_min_step_raises_instead_of_retrying_forever():
    with pytest.raises(pn.NonFiniteStateError, match="not finite at t=") as info:
        pn.solve(nan_after(0.5), torch.ones(2, **F64), T, controller=pn.IController(min_step=1e-3), max_steps=10_000)
    assert 0.4 < info.value.t <= 0.5


@pytest.mark.parametrize(("option", "value"), [("safety", math.nan), ("ifactor", math.inf), ("dfactor", 0.0)])
def test_controller_constants_are_validated(option, value):
    with pytest.raises(ValueError, match=option):
        pn.IController(**{option: value})
    with pytest.raises(ValueError, match=option):
        pn.odeint(linear_decay, torch.ones(2, **F64), T, options={option: value})


def test_min_step_above_max_step_is_refused():
    with pytest.raises(ValueError, match="min_step must be <= max_step"):
        pn.IController(min_step=0.5, max_step=0.1)


# --- item 7: float16 state, empty batch ---------------------------------------------------------

def test_float16_state_starts_and_is_accurate_to_its_precision():
    y0 = torch.full((4,), 2.0, dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.SolverWarning)  # 1e-3 is near float16's resolution, on purpose
        sol = pn.solve(linear_decay, y0, T.half(), controller=pn.IController(rtol=1e-3, atol=1e-3))
    assert sol.ys.dtype == torch.float16
    exact = linear_decay_exact(y0.double(), T)
    assert torch.allclose(sol.ys.double(), exact, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
@pytest.mark.parametrize("adjoint", [False, True])
def test_empty_batch_gives_an_empty_solution_without_evaluations(backend, adjoint):
    pytest.importorskip("scipy")
    calls = []
    field = MLPField(dim=3, dtype=torch.float64)

    def counted(t, y):
        calls.append(t)
        return field(t, y)

    y0 = torch.zeros(0, 3, **F64, requires_grad=adjoint)
    sol = pn.solve(counted, y0, T, backend=backend, adjoint=pn.Adjoint(params=()) if adjoint else False)
    assert sol.ys.shape == (3, 0, 3) and sol.stats.nfe == 0 and not calls
    if adjoint:
        sol.ys.sum().backward()
        assert y0.grad.shape == (0, 3)


# --- item 8: tolerances below the dtype's resolution, long solves -------------------------------

def test_tolerances_below_the_dtype_resolution_warn_once():
    y0 = torch.ones(2)
    with pytest.warns(pn.SolverWarning, match="float32"):
        pn.solve(linear_decay, y0, T.float(), controller=pn.IController(rtol=3e-7, atol=1e-9))
    with warnings.catch_warnings():
        warnings.simplefilter("error", pn.SolverWarning)
        # once per dtype and tolerance pair; float64 resolves them; 10 eps(float32) = 1.2e-6 < rtol = 1e-5
        pn.solve(linear_decay, y0, T.float(), controller=pn.IController(rtol=3e-7, atol=1e-9))
        pn.solve(linear_decay, y0.double(), T, controller=pn.IController(rtol=3e-7, atol=1e-9))
        pn.solve(linear_decay, y0, T.float(), controller=pn.IController(rtol=1e-5, atol=1e-7))


def test_a_long_solve_warns_once_with_t_and_dt():
    with pytest.warns(pn.SolverWarning, match=r"taken 20 steps and is at t=.* with dt=") as record:
        pn.solve(linear_decay, torch.ones(2, **F64), T, controller=pn.IController(rtol=1e-10, atol=1e-12),
                 warn_after_steps=20)
    assert len([w for w in record if issubclass(w.category, pn.SolverWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", pn.SolverWarning)
        pn.solve(linear_decay, torch.ones(2, **F64), T, controller=pn.IController(rtol=1e-10, atol=1e-12),
                 warn_after_steps=None)


# --- item 9: validation gaps ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_tolerance_tensor_of_the_wrong_shape_is_named(name):
    with pytest.raises(ValueError, match=rf"{name} has shape \(3,\), which does not broadcast"):
        pn.solve(linear_decay, torch.ones(4, 2, **F64), T,
                 controller=pn.IController(**{name: torch.full((3,), 1e-6, **F64)}))


def test_tolerance_tensor_broadcast_to_the_state_is_per_element():
    y0 = torch.ones(4, 2, **F64)
    per_column = pn.solve(linear_decay, y0, T,
                          controller=pn.IController(rtol=torch.tensor([1e-6, 1e-6], **F64), atol=1e-8))
    scalar = pn.solve(linear_decay, y0, T, controller=pn.IController(rtol=1e-6, atol=1e-8))
    assert torch.equal(per_column.ys, scalar.ys)


def test_infinite_tensor_tolerance_is_refused():
    with pytest.raises(ValueError, match="atol must be >= 0 and finite"):
        pn.solve(linear_decay, torch.ones(2, **F64), T,
                 controller=pn.IController(atol=torch.tensor([1e-6, math.inf], **F64)))


def test_complex_state_is_refused_up_front():
    with pytest.raises(TypeError, match="complex states are not supported"):
        pn.solve(linear_decay, torch.ones(2, dtype=torch.complex128), T)


def test_tuple_state_part_of_the_wrong_shape_but_right_size_is_refused():
    def swapped(t, state):
        x, v = state  # x: (2,), v: (1,) -> returns (1,) and (2,): same total size, wrong shapes
        return v, -x

    y0 = (torch.ones(2, **F64), torch.zeros(1, **F64))
    with pytest.raises(ValueError, match=r"func's output \[0\] must be shaped like y0\[0\] \(2,\), got \(1,\)"):
        pn.solve(swapped, y0, T)


# func breaks after t = 0.9: rk4's stage at t = 1 sees it in the step to 1, euler only in the step from 1
@pytest.mark.parametrize(("method", "first_bad"), [("euler", 1.5), ("rk4", 1.0)])
def test_fixed_grid_nan_raises_with_the_time(method, first_bad):
    t = torch.linspace(0, 2, 5, **F64)
    with pytest.raises(pn.NonFiniteStateError, match=f"fixed-grid solution is not finite at t={first_bad:g}") as info:
        pn.solve(nan_after(0.9), torch.ones(2, **F64), t, method=method)
    assert info.value.t == first_bad


def test_scipy_takes_a_bfloat16_state_and_returns_it():
    pytest.importorskip("scipy")
    y0 = torch.ones(3, dtype=torch.bfloat16)
    sol = pn.solve(linear_decay, y0, T.to(torch.bfloat16), backend="scipy",
                   controller=pn.IController(rtol=1e-3, atol=1e-4))
    assert sol.ys.dtype == torch.bfloat16
    assert torch.allclose(sol.ys.double(), linear_decay_exact(y0.double(), T), rtol=1e-2, atol=1e-2)


def test_scipy_first_step_beyond_the_span_is_a_clear_error():
    pytest.importorskip("scipy")
    with pytest.raises(ValueError, match="first_step=5 is larger than the integration span"):
        pn.solve(linear_decay, torch.ones(2, **F64), T, backend="scipy", controller=pn.IController(first_step=5.0))


# --- item 10: mixed precision with the adjoint -------------------------------------------------

def test_adjoint_backward_runs_under_the_forwards_autocast_state():
    seen = []

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = MLPField(dim=3, hidden=16)

        def forward(self, t, y):
            seen.append(torch.is_autocast_enabled("cpu"))
            return self.net(t, y)

    field = Field()
    y0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    grads = {}
    for adjoint in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as Lightning's bf16-mixed: forward only
            ys = pn.solve(field, y0, t, method="rk4", controller=pn.FixedGrid(step_size=0.25), adjoint=adjoint).ys
        n_forward = len(seen)
        grads[adjoint] = torch.autograd.grad(ys[-1].float().square().sum(), (y0, *field.parameters()))
    assert seen[n_forward:] and all(seen[n_forward:])  # the backward solve's calls saw autocast on
    for direct, adjoint in zip(grads[False], grads[True]):
        assert adjoint.dtype == direct.dtype
        assert torch.allclose(adjoint, direct, rtol=5e-2, atol=5e-2 * direct.abs().max().item())


@pytest.mark.parametrize("rtol, atol", [(0.0, 1e-10), (1e-8, 0.0)], ids=["absolute-only", "relative-only"])
def test_a_zero_rtol_or_atol_is_a_purely_absolute_or_relative_tolerance(rtol, atol):
    """torchdiffeq accepts either tolerance at 0; the error is then measured against the other one alone."""
    y0 = torch.tensor([1.0, 2.0], **F64)
    t = torch.tensor([0.0, 1.0], **F64)
    ys = pn.odeint(lambda t, y: -y, y0, t, rtol=rtol, atol=atol)
    assert torch.allclose(ys[-1], y0 * math.exp(-1.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("make", [
    lambda: pn.IController(rtol=0.0, atol=0.0),
    lambda: pn.FixedGrid(step_size=0.1, rtol=0, atol=0.0),
    lambda: pn.IController(rtol=(1e-6, 0.0), atol=(1e-9, 0.0)),  # one part of a tuple state
], ids=["adaptive", "adams-corrector", "per-part"])
def test_rtol_and_atol_both_zero_are_refused_by_name(make):
    with pytest.raises(ValueError, match=r"rtol and atol are both 0: .* set one of them > 0"):
        make()


def test_rtol_and_atol_both_zero_for_some_elements_are_refused_against_the_state():
    with pytest.raises(ValueError, match=r"rtol and atol are both 0 for some elements"):
        pn.solve(linear_decay, torch.ones(2, **F64), T,
                 controller=pn.IController(rtol=torch.tensor([1e-6, 0.0], **F64), atol=torch.tensor([0.0, 0.0], **F64)))
    with pytest.raises(ValueError, match=r"rtol and atol are both 0"):
        pn.odeint(linear_decay, torch.ones(2, **F64), T, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match=r"rtol must be >= 0 and finite, got -1e-06"):
        pn.odeint(linear_decay, torch.ones(2, **F64), T, rtol=-1e-6)
