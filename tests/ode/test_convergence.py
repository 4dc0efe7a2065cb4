"""Empirical convergence orders of every method, from one list of all methods."""

import math

import numpy as np
import pytest
import torch

import pynodeta as pn
from pynodeta.ode import METHODS
from pynodeta.ode.problems import linear_decay, linear_decay_exact, rational, rational_exact

Y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)


def _fixed_step_controller(name: str, h: float) -> pn.IController | pn.FixedGrid:
    if METHODS[name].adaptive:
        # Huge tolerances make every step acceptable; max_step pins the step to h.
        return pn.IController(rtol=1e6, atol=1e6, first_step=h, max_step=h)
    return pn.FixedGrid(step_size=h, rtol=1e-7, atol=1e-7)  # the Adams methods' corrector reads the tolerances


def _solve(name: str, h: float, t: torch.Tensor):
    return pn.solve(rational, Y0, t, method=name, controller=_fixed_step_controller(name, h)).ys


def _steps(order: int) -> list[float]:
    # errors between ~1e-5 and ~1e-12: asymptotic regime, above float64 round-off
    if order >= 8:  # dopri8 reaches round-off already at h = 0.05
        return [0.5, 0.4, 1 / 3, 0.25]
    return [0.1, 0.05, 0.025, 0.0125] if order >= 4 else [0.05, 0.025, 0.0125, 0.00625]


def _fitted_order(steps, errors) -> float:
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_convergence_order_at_grid_points(name):
    order = METHODS[name].order
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    exact = rational_exact(Y0, t)[-1]
    steps = _steps(order)
    errors = [float((_solve(name, h, t)[-1] - exact).abs().max()) for h in steps]
    if order >= 8:  # here the h^9, h^10 error terms dominate h^8 until round-off: check the order as a floor
        assert _fitted_order(steps, errors) >= order - 0.3
    else:
        assert _fitted_order(steps, errors) == pytest.approx(order, abs=0.3)


@pytest.mark.parametrize("name", sorted(n for n, m in METHODS.items() if m.dense is not None))
def test_dense_output_order(name):
    """Between steps the dense output converges at its own order (interpolation error is local O(h^(q+1)),
    so the global error at off-grid times is O(h^q) once q <= order)."""
    method = METHODS[name]
    t = torch.tensor([0.0, 0.37, 0.61, 1.93], dtype=torch.float64)  # never on the step grid below
    exact = rational_exact(Y0, t)
    steps = _steps(method.dense_order)
    errors = [float((_solve(name, h, t) - exact).abs().max()) for h in steps]
    assert _fitted_order(steps, errors) >= method.dense_order - 0.3


@pytest.mark.parametrize("name", sorted(n for n, m in METHODS.items() if m.adaptive))
def test_error_scales_with_tolerance(name):
    """Tighter tolerance, smaller error, and the error tracks the tolerance (within two decades)."""
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    exact = linear_decay_exact(Y0, t)[-1]
    errors = []
    for tol in (1e-4, 1e-6, 1e-8):
        ys = pn.solve(linear_decay, Y0, t, method=name, controller=pn.IController(rtol=tol, atol=tol)).ys
        errors.append(float((ys[-1] - exact).abs().max()))
        assert errors[-1] < 100 * tol
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("name", ["rk4", "midpoint"])
def test_cubic_interpolation_for_fixed_grid(name):
    """FixedGrid(interpolation="cubic") makes off-grid outputs third-order instead of second-order."""
    t = torch.tensor([0.0, 0.37, 1.93], dtype=torch.float64)
    exact = rational_exact(Y0, t)
    steps = [0.1, 0.05, 0.025]

    def errs(kind):
        grids = [pn.FixedGrid(step_size=h, interpolation=kind) for h in steps]
        return [float((pn.solve(rational, Y0, t, method=name, controller=grid).ys - exact).abs().max())
                for grid in grids]

    assert _fitted_order(steps, errs("linear")) == pytest.approx(2, abs=0.3)
    assert _fitted_order(steps, errs("cubic")) >= min(METHODS[name].order, 3) - 0.3


def test_fixed_grid_step_count_follows_torchdiffeq_rule():
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    sol = pn.solve(rational, Y0, t, method="rk4", controller=pn.FixedGrid(step_size=0.1))
    assert sol.stats.n_steps == 10
    assert sol.stats.nfe == 40
    assert math.fsum(sol.stats.step_sizes) == pytest.approx(1.0)
