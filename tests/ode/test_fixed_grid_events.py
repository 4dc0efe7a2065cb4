"""Events on a fixed grid: the event time is the root of the solution the solve reports (the grid's states
and the method's interpolation between them), so the state at the event satisfies the event to round-off,
and the time is torchdiffeq's; a fixed grid without a step size is refused, as torchdiffeq refuses it."""

import math

import pytest
import torch

import pynodeta as pn

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64


def _oscillator(t, y):
    """A damped oscillator, h'' = -h - 0.1 h': not a polynomial, so no method is exact on it, and tame both
    ways in time."""
    return torch.stack([y[1], -y[0] - 0.1 * y[1] + 0.0 * t])


@pytest.mark.parametrize("method, step", [("euler", 0.05), ("midpoint", 0.1), ("rk4", 0.1), ("rk4", 0.01),
                                          ("explicit_adams", 0.05), ("implicit_adams", 0.05)])
@pytest.mark.parametrize("interp", ["linear", "cubic"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_the_state_at_the_event_satisfies_it_and_the_time_is_torchdiffeqs(method, step, interp, reverse):
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t0 = torch.tensor(0.3, dtype=F64)
    options = {"step_size": step, "interp": interp}
    event_t, ys = pn.odeint_event(_oscillator, y0, t0, event_fn=lambda t, y: y[0], method=method, options=options,
                                  reverse_time=reverse)
    assert ys.shape == (2, 2) and torch.equal(ys[0], y0)
    assert abs(float(ys[-1, 0])) < 1e-12  # on the reported solution, to round-off
    anchor_t, _ = torchdiffeq.odeint_event(_oscillator, y0, t0, event_fn=lambda t, y: y[0], method=method,
                                           options=options, reverse_time=reverse)
    assert float(event_t) == pytest.approx(float(anchor_t), abs=1e-8)  # torchdiffeq's own is good to ~1e-9


def test_a_fixed_grid_without_a_step_size_is_refused_by_name():
    for options in (None, {"grid_constructor": lambda func, y0, t: torch.linspace(0.0, 1.0, 11, dtype=F64)}):
        with pytest.raises(ValueError, match=r"a fixed-grid method needs options=\{'step_size': \.\.\.\}"):
            pn.odeint_event(_oscillator, torch.tensor([10.0, 0.0], dtype=F64), torch.tensor(0.0, dtype=F64),
                            event_fn=lambda t, y: y[0], method="euler", options=options)


def test_more_than_two_times_with_an_event_are_refused():
    with pytest.raises(ValueError, match=r"\[t0\] or \[t0, t1\].*got 3 times, and the solve ends at the event"):
        pn.odeint(_oscillator, torch.tensor([10.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0, 2.0], dtype=F64),
                  event_fn=lambda t, y: y[0])


def test_an_event_far_along_a_fixed_grid_is_found_and_differentiable():
    """y' = -y from 1 with rk4, step 0.01 and the cubic interpolation: y = 1e-3 at t = 3 ln 10, 691 steps on,
    found 32 steps at a time; its gradient by the implicit-function theorem is the exact one."""
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    event_t, ys = pn.odeint_event(lambda t, y: -y, y0, torch.tensor(0.0, dtype=F64),
                                  event_fn=lambda t, y: y.sum() - 1e-3, method="rk4",
                                  options={"step_size": 0.01, "interp": "cubic"})
    assert float(event_t) == pytest.approx(3 * math.log(10), abs=1e-7)
    (grad,) = torch.autograd.grad(event_t, y0)  # t* = ln(y0 / 1e-3): dt*/dy0 = 1 / y0
    assert float(grad) == pytest.approx(1.0, rel=1e-6)
