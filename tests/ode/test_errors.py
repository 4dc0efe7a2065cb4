"""Every bad input and every solver failure gets a clear exception that names the argument and a fix."""

import math

import pytest
import torch

import pynodeta as pn

T = torch.tensor([0.0, 1.0])


def decay(t, y):
    return -y


@pytest.mark.parametrize(
    "t, error, match",
    [
        ([0.0, 1.0], TypeError, "t must be a 1-D floating-point torch.Tensor"),
        (torch.tensor([0, 1]), TypeError, "t must be floating point"),
        (torch.zeros(2, 2), ValueError, "t must be 1-D"),
        (torch.tensor([0.0, 1.0, 0.5]), ValueError, "strictly increasing or strictly decreasing"),
        (torch.tensor([0.0, 0.0]), ValueError, "strictly increasing"),
        (torch.tensor([0.0, math.nan]), ValueError, "t must be finite"),
    ],
)
def test_bad_times(t, error, match):
    with pytest.raises(error, match=match):
        pn.solve(decay, torch.ones(2), t)


def test_bad_initial_state():
    with pytest.raises(TypeError, match=r"y0 must be floating point.*\.float\(\)"):
        pn.solve(decay, torch.ones(2, dtype=torch.int64), T)
    with pytest.raises(ValueError, match="y0 contains NaN or Inf"):
        pn.solve(decay, torch.tensor([1.0, math.inf]), T)
    with pytest.raises(ValueError, match=r"y0\[1\] contains NaN"):
        pn.solve(lambda t, s: s, (torch.ones(1), torch.tensor([math.nan])), T)
    with pytest.raises(TypeError, match="y0 must be a floating-point tensor or a non-empty tuple"):
        pn.solve(decay, [1.0, 2.0], T)


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [-1e-3, math.nan, math.inf])
def test_negative_or_non_finite_tolerances(name, value):
    with pytest.raises(ValueError, match=f"{name} must be >= 0 and finite"):
        pn.IController(**{name: value})
    with pytest.raises(ValueError, match=f"{name} must be >= 0 and finite"):
        pn.odeint(decay, torch.ones(2), T, **{name: value})


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'dopri6'.*'dopri5'.*'tsit5'"):
        pn.odeint(decay, torch.ones(2), T, method="dopri6")


def test_unknown_option_and_misused_options():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['jump_times'\]"):
        pn.odeint(decay, torch.ones(2), T, options={"jump_times": torch.tensor([0.5])})
    with pytest.raises(ValueError, match="step_size'\\] is for fixed-grid methods"):
        pn.odeint(decay, torch.ones(2), T, method="dopri5", options={"step_size": 0.1})
    with pytest.raises(ValueError, match="step_size'\\] must be > 0"):
        pn.odeint(decay, torch.ones(2), T, method="rk4", options={"step_size": 0.0})
    with pytest.raises(ValueError, match="'seminorm' is an adjoint option"):
        pn.odeint(decay, torch.ones(2), T, options={"norm": "seminorm"})
    with pytest.raises(ValueError, match="controller must be 'i'"):
        pn.SolverSettings.from_arguments(controller="pid")
    with pytest.raises(ValueError, match="unknown backend 'fortran'"):
        pn.solve(decay, torch.ones(2), T, backend="fortran")


def test_func_returning_the_wrong_shape():
    with pytest.raises(ValueError, match=r"func must return dy/dt shaped like y \(3,\), got \(2,\)"):
        pn.solve(lambda t, y: y[:2], torch.ones(3), T)


def test_step_size_underflow_reports_time_and_remedies():
    """y' = y^2, y(0) = 1 blows up at t = 1: the controller shrinks dt until it underflows there."""
    with pytest.raises(pn.StepSizeUnderflowError, match="step size underflow at t=") as info:
        pn.solve(lambda t, y: y**2, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64))
    err = info.value
    assert err.t == pytest.approx(1.0, abs=1e-3)
    assert err.dt < 1e-12 and err.nfe > 0
    assert "atol" in str(err) and "fixed-step" in str(err)


def test_max_steps_keeps_the_partial_solution():
    t = torch.linspace(0, 10, 11, dtype=torch.float64)
    with pytest.raises(pn.MaxStepsReachedError, match="max_num_steps=20 reached") as info:
        pn.solve(lambda tt, y: torch.cos(3 * tt) * y, torch.ones(2, dtype=torch.float64), t,
                 controller=pn.IController(rtol=1e-10, atol=1e-10), max_steps=20)
    err = info.value
    assert 1 <= len(err.t) < len(t)
    assert err.ys.shape == (len(err.t), 2)
    exact = torch.exp(torch.sin(3 * err.t) / 3)
    assert torch.allclose(err.ys[:, 0], exact, atol=1e-8)


def test_max_steps_for_fixed_grid_methods():
    with pytest.raises(pn.MaxStepsReachedError) as info:
        pn.solve(decay, torch.ones(1), torch.tensor([0.0, 0.5, 1.0]), method="euler",
                 controller=pn.FixedGrid(step_size=0.01), max_steps=60)
    assert len(info.value.t) == 2  # reached t = 0.5 after 50 steps, not t = 1
    assert "or take a larger step_size" in str(info.value) and "rtol" not in str(info.value)  # no tolerances here


def test_nan_from_func_is_reported_with_its_time():
    def breaks_at_half(t, y):
        return y * (torch.nan if float(t) > 0.5 else 1.0)

    with pytest.raises(pn.NonFiniteStateError, match="not finite at t=") as info:
        pn.solve(breaks_at_half, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert 0.4 < info.value.t <= 0.5 + 1e-9


def test_nan_at_the_start_is_reported_immediately():
    with pytest.raises(pn.NonFiniteStateError, match="func's output is not finite at t=0"):
        pn.solve(lambda t, y: y * torch.nan, torch.ones(2), T)


def test_event_fn_must_return_one_value():
    with pytest.raises(ValueError, match="event_fn must return a single value"):
        pn.odeint(decay, torch.ones(2), T, event_fn=lambda t, y: y)


def test_adjoint_method_change_needs_adjoint_options():
    field = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="pass adjoint_options too"):
        pn.odeint_adjoint(lambda t, y: field(y), torch.ones(2, requires_grad=True), T, method="dopri5",
                          options={"max_step": 0.1}, adjoint_method="tsit5", adjoint_params=field.parameters())


def test_backend_options_reach_the_backend():
    with pytest.raises(ValueError, match=r"unknown backend_options \['jacobian'\] for backend 'torch'"):
        pn.solve(decay, torch.ones(2), T, backend_options={"jacobian": "autograd"})
    sol = pn.solve(decay, torch.ones(2, dtype=torch.float64), T.double(), backend="scipy", method="radau",
                   backend_options={"jacobian": "finite-difference"}, controller=pn.IController(rtol=1e-8, atol=1e-8))
    assert torch.allclose(sol.ys[-1], torch.full((2,), math.exp(-1), dtype=torch.float64), atol=1e-6)


def test_max_steps_partial_solution_keeps_the_tuple_structure():
    def oscillator(t, state):
        x, v = state
        return v, -x

    y0 = (torch.ones(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)[:2])
    t = torch.linspace(0, 10, 6, dtype=torch.float64)
    with pytest.raises(pn.MaxStepsReachedError) as info:
        pn.solve(oscillator, y0, t, controller=pn.IController(rtol=1e-10, atol=1e-10), max_steps=30)
    xs, vs = info.value.ys
    assert xs.shape == vs.shape == (len(info.value.t), 2)
    assert torch.allclose(xs[:, 0], torch.cos(info.value.t), atol=1e-8)


@pytest.mark.parametrize("key", ["first_step", "step_size"])
def test_step_options_must_be_finite(key):
    method = "rk4" if key == "step_size" else "dopri5"
    with pytest.raises(ValueError, match=f"options\\['{key}'\\] must be > 0 and finite, got inf"):
        pn.odeint(decay, torch.ones(2), T, method=method, options={key: math.inf})


@pytest.mark.parametrize("spelling, typed", [
    ({"rtol": 1e-5}, r"controller=IController\(rtol=..., atol=...\).*rtol= is odeint's spelling"),
    ({"atol": 1e-5, "rtol": 1e-5}, r"controller=IController\(rtol=..., atol=...\).*atol= is odeint's spelling"),
    ({"options": {"step_size": 0.1}}, r"FixedGrid\(step_size=..., .*options= is odeint's spelling"),
    ({"adjoint_rtol": 1e-4}, r"adjoint=Adjoint\(controller=IController\(.*adjoint_rtol= is odeint_adjoint's"),
    ({"adjoint_params": ()}, r"adjoint=Adjoint\(params=...\); adjoint_params= is odeint_adjoint's"),
    ({"controller": "pi"}, r"controller=PIController\(rtol=..., atol=...\); controller='pi' is odeint's"),
    ({"rtl": 1e-5}, r"unexpected keyword argument\(s\) \['rtl'\]"),
])
def test_solve_takes_typed_parts_and_names_them_for_torchdiffeqs_spellings(spelling, typed):
    with pytest.raises(TypeError, match=typed):
        pn.solve(decay, torch.ones(2), T, **spelling)


def test_a_per_element_forward_tolerance_that_the_adjoint_would_reuse_is_refused_with_both_spellings_of_the_fix():
    linear = torch.nn.Linear(2, 2).double()
    y0 = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^the forward rtol, which the adjoint solve reuses, must be a single number "
                                         r"for the adjoint solve.*adjoint_rtol=\.\.\..*Adjoint\(controller="):
        pn.odeint_adjoint(lambda t, y: linear(y), y0, t, rtol=torch.tensor([1e-6, 1e-7], dtype=torch.float64),
                          adjoint_params=tuple(linear.parameters()))
    ys = pn.odeint_adjoint(lambda t, y: linear(y), y0, t, rtol=torch.tensor([1e-6, 1e-7], dtype=torch.float64),
                           adjoint_params=tuple(linear.parameters()), adjoint_rtol=1e-6, adjoint_atol=1e-8)
    ys.sum().backward()  # with the adjoint's own tolerances it runs
    assert torch.isfinite(y0.grad).all()


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_a_tolerance_given_as_text_is_refused_as_torchdiffeq_refuses_it(name):
    with pytest.raises(TypeError, match=r"rtol/atol must be numbers, got the text '1e-3'; pass a number"):
        pn.odeint(decay, torch.ones(2), T, **{name: "1e-3"})
    np = pytest.importorskip("numpy")
    assert torch.isfinite(pn.odeint(decay, torch.ones(2), T, **{name: np.float32(1e-5)})).all()  # numpy scalars do
