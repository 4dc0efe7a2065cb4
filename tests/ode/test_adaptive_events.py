"""Events of an adaptive solve: the bracket where event_fn changes sign is narrowed on the continuous solution
of one solve over it (its dense output), so that the search costs about torchdiffeq's one solve and the
reported solution one more from t0; on backends whose solvers keep no steps, each trial point is a solve."""

import math

import pytest
import torch

import pynodeta as pn
from pynodeta.ode import events

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64
GRAVITY = 9.81
HEIGHT = 10.0
LANDING = math.sqrt(2 * HEIGHT / GRAVITY)  # h = HEIGHT - GRAVITY t^2 / 2 reaches 0


def _falling(t, y):
    """A ball dropped from HEIGHT: h' = v, v' = -GRAVITY."""
    return torch.stack([y[1], torch.full_like(y[1], -GRAVITY)])


def _counted(func):
    """func, and the list its calls append to."""
    calls = []

    def counted(t, y):
        calls.append(float(t))
        return func(t, y)

    return counted, calls


def test_an_event_search_costs_at_most_two_and_a_half_times_torchdiffeqs_evaluations():
    """torchdiffeq finds the root on the interpolant of its one solve. pynodeta searches in windows (about
    torchdiffeq's solve), narrows the bracket on one solve over it, and reports the solution of a
    differentiable solve from t0: 78 evaluations to torchdiffeq's 32 here, where a solve per trial point
    of the bracket took 173."""
    y0, t0 = torch.tensor([HEIGHT, 0.0], dtype=F64), torch.tensor(0.0, dtype=F64)
    kwargs = {"event_fn": lambda t, y: y[0], "method": "dopri5", "rtol": 1e-7, "atol": 1e-9}
    ours, our_calls = _counted(_falling)
    theirs, their_calls = _counted(_falling)
    event_t, ys = pn.odeint_event(ours, y0, t0, **kwargs)
    anchor_t, _ = torchdiffeq.odeint_event(theirs, y0, t0, **kwargs)
    assert float(event_t) == pytest.approx(LANDING, abs=1e-9)
    assert float(event_t) == pytest.approx(float(anchor_t), abs=1e-9)
    assert abs(float(ys[-1, 0])) < 1e-12
    assert len(our_calls) <= 2.5 * len(their_calls)


@pytest.mark.parametrize("method", pn.ode.ADAPTIVE_METHODS)
def test_every_adaptive_method_narrows_the_bracket_on_its_dense_output(method):
    """y'' = -y from (1, 0): y = cos t reaches -1/2 at 2 pi / 3, found to the accuracy of the solution by every
    adaptive method, FSAL or not (the non-FSAL ones' dense output needs f at the step's end too). At this
    tolerance dopri8's and fehlberg2's solutions are some 1e-6 off cos t (torchdiffeq's as well)."""
    event_t, ys = pn.odeint_event(lambda t, y: torch.stack([y[1], -y[0]]), torch.tensor([1.0, 0.0], dtype=F64),
                                  torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0] + 0.5, method=method,
                                  rtol=1e-8, atol=1e-10)
    assert float(event_t) == pytest.approx(2 * math.pi / 3, abs=1e-5)
    assert float(ys[-1, 0]) == pytest.approx(-0.5, abs=1e-5)


def test_a_backend_without_dense_output_narrows_the_bracket_by_a_solve_per_trial_point(monkeypatch):
    """SciPy's solvers keep no steps to interpolate: the bracket is narrowed by solves from its left end."""

    def no_dense_solve(*args, **kwargs):
        raise AssertionError("a scipy search has no dense output to narrow its bracket on")

    monkeypatch.setattr(events, "dense_solve", no_dense_solve)
    event_t, ys = events.solve_until_event(pn.solve, _falling, torch.tensor([HEIGHT, 0.0], dtype=F64),
                                           torch.tensor([0.0, 1.0], dtype=F64), lambda t, y: y[0], method="rk45",
                                           backend="scipy", controller=pn.IController(rtol=1e-9, atol=1e-11))
    assert float(event_t) == pytest.approx(LANDING, abs=1e-9)
    assert abs(float(ys[-1, 0])) < 1e-9
