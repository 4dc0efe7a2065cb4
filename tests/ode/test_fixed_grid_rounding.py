"""Fixed-grid steps round y once per step (torchdiffeq's y0 + dy), and an event on a fixed grid is
reported from a solve whose steps all have the grid's size."""

import math

import torch

import pynodeta as pn


def test_float32_rk4_rounds_y_once_per_step():
    """y' = 0.2 from 3.2: every rk4 step adds the same 0.002 and rounds y with the same bias; rounding it
    once per step (not once per weight, 4 times) keeps the drift after 155 steps below 2e-5 (5e-5 before)."""
    y0 = torch.tensor([3.2])
    t = torch.tensor([1.0, 1.0 + 155 * 0.01], dtype=torch.float64)
    y = pn.odeint(lambda t, y: torch.full_like(y, 0.2), y0, t, method="rk4", options={"step_size": 0.01})[-1]
    exact = 3.2 + 0.2 * 155 * 0.01
    assert abs(float(y) - exact) < 2e-5


def test_event_on_an_adams_grid_keeps_equal_steps():
    """y' = -y, event y = 0.5 at t* = ln 2, between grid points of step 0.01: the reported state comes from
    equal Adams steps (interpolated at t*), so it is 0.5 to the method's accuracy, not off by a step
    shortened against the Adams weights' assumption."""
    y0 = torch.tensor([1.0], dtype=torch.float64)
    event_t, ys = pn.odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                            event_fn=lambda t, y: y.sum() - 0.5, method="implicit_adams",
                            options={"step_size": 0.01, "interp": "cubic"})
    assert abs(float(event_t) - math.log(2)) < 1e-7
    assert abs(float(ys[-1]) - 0.5) < 1e-7
