"""SolveStats: counts add up, times are where func was called, and record_stats collects them."""

import math

import pytest
import torch

import pynodeta as pn
from pynodeta.ode import METHODS
from pynodeta.ode.problems import van_der_pol


@pytest.mark.parametrize("name", sorted(METHODS))
def test_counts_are_consistent(name):
    calls = []

    def f(t, y):
        calls.append(float(t))
        return van_der_pol(1.0)(t, y)

    tolerances = dict(rtol=1e-6, atol=1e-8)
    controller = pn.IController(**tolerances) if METHODS[name].adaptive else pn.FixedGrid(step_size=0.05, **tolerances)
    t = torch.tensor([0.0, 0.7, 2.0], dtype=torch.float64)
    stats = pn.solve(f, torch.tensor([2.0, 0.0], dtype=torch.float64), t, method=name, controller=controller).stats
    assert stats.method == name and stats.backend == "torch"
    assert stats.nfe == len(calls) == len(stats.t_evaluated)
    assert stats.t_evaluated == pytest.approx(calls)
    assert stats.n_steps == stats.n_accepted + stats.n_rejected
    assert len(stats.step_sizes) == stats.n_accepted
    # accepted steps cover the span (the last one may overshoot it: outputs come from dense output)
    assert math.fsum(stats.step_sizes) >= 2.0 - 1e-12
    assert math.fsum(stats.step_sizes[:-1]) < 2.0


def test_dopri5_cost_model():
    """1 evaluation for f(t0), 1 for the initial-step probe, then 6 per attempted step (FSAL)."""
    stats = pn.solve(van_der_pol(1.0), torch.tensor([2.0, 0.0]), torch.tensor([0.0, 3.0])).stats
    assert stats.nfe == 2 + 6 * stats.n_steps


def test_record_stats_collects_odeint_calls_and_nests():
    y0 = torch.tensor([1.0, 0.0])
    with pn.record_stats() as outer:
        pn.odeint(van_der_pol(1.0), y0, torch.tensor([0.0, 1.0]))
        with pn.record_stats() as inner:
            pn.odeint(van_der_pol(1.0), y0, torch.tensor([0.0, 2.0]), method="tsit5")
    pn.odeint(van_der_pol(1.0), y0, torch.tensor([0.0, 1.0]))  # outside: not recorded
    assert [s.method for s in outer] == ["dopri5", "tsit5"]
    assert [s.method for s in inner] == ["tsit5"]
    assert all(s.nfe > 0 for s in outer)


def test_reversed_time_records_actual_times():
    stats = pn.solve(van_der_pol(1.0), torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])).stats
    assert stats.t_evaluated[0] == 1.0
    assert max(stats.t_evaluated) <= 1.0
    assert all(h > 0 for h in stats.step_sizes)


def test_ode_blocks_are_found_by_protocol_not_by_class():
    class UserBlock(torch.nn.Module):  # follows SolvesODE without subclassing anything of pynodeta
        def __init__(self):
            super().__init__()
            self.func, self.last_stats = torch.nn.Linear(2, 2), None

    class FuncOnly(torch.nn.Module):  # a .func alone does not make an ODE block
        def __init__(self):
            super().__init__()
            self.func = torch.nn.Linear(2, 2)

    model = torch.nn.Sequential(UserBlock(), FuncOnly(), torch.nn.Sequential(UserBlock()))
    assert pn.ode.find_ode_blocks(model) == [model[0], model[2][0]]
    assert isinstance(model[0], pn.ode.SolvesODE) and not isinstance(model[1], pn.ode.SolvesODE)
