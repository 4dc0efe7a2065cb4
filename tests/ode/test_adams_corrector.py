"""implicit_adams' corrector as torchdiffeq 0.2.5's: the solve's rtol/atol, max_iters, max_order, and the
order drop after a corrector that does not converge."""

import warnings

import pytest
import torch

import pynodeta as pn
from pynodeta.ode.problems import rational

F64 = torch.float64
Y0, T = torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 0.3, 1.0], dtype=F64)


class Counted:
    def __init__(self, func):
        self.func, self.calls = func, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.func(t, y)


def _solve(odeint, rtol, atol, options):
    func = Counted(rational)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys = odeint(func, Y0, T, method="implicit_adams", rtol=rtol, atol=atol, options=dict(options))
    return ys, func.calls, sum("converge" in str(w.message) for w in caught)


@pytest.mark.parametrize("options", [{"step_size": 0.05}, {"step_size": 0.05, "max_iters": 2},
                                     {"step_size": 0.05, "max_order": 6}, {"step_size": 0.3, "max_iters": 1}])
@pytest.mark.parametrize("tolerances", [(1e-7, 1e-9), (1e-3, 1e-4), (1e-12, 1e-14)])
def test_same_evaluations_warnings_and_results_as_torchdiffeq(options, tolerances):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    ours, our_calls, our_warnings = _solve(pn.odeint, *tolerances, options)
    theirs, their_calls, their_warnings = _solve(torchdiffeq.odeint, *tolerances, options)
    assert our_calls == their_calls
    assert our_warnings == their_warnings
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-13)


def test_the_corrector_stops_at_the_solves_tolerances():
    """Looser tolerances stop the functional iteration sooner; every step costs one f at its start plus
    1..max_iters corrector evaluations (after the two rk4 starting steps of 4 evaluations)."""
    _, loose, _ = _solve(pn.odeint, 1e-3, 1e-4, {"step_size": 0.05})
    _, tight, tight_warnings = _solve(pn.odeint, 1e-12, 1e-14, {"step_size": 0.05})
    n_steps, rk4_steps = 20, 2
    assert loose < tight
    assert rk4_steps * 4 + (n_steps - rk4_steps) * 2 <= loose
    assert tight <= rk4_steps * 4 + (n_steps - rk4_steps) * (1 + 4)
    assert tight_warnings > 0  # 1e-12 is beyond what 4 iterations reach at this step


def test_a_corrector_that_does_not_converge_lowers_the_order():
    """After a failed corrector the oldest f is dropped: with max_iters=1 every step fails, so the history
    never exceeds three values and the result equals max_order=4 (predictor order 3 throughout)."""
    capped, _, _ = _solve(pn.odeint, 1e-12, 1e-14, {"step_size": 0.05, "max_iters": 1, "max_order": 4})
    failing, _, n_warnings = _solve(pn.odeint, 1e-12, 1e-14, {"step_size": 0.05, "max_iters": 1})
    assert n_warnings == 20 - 2  # every step after the two rk4 ones
    assert torch.equal(failing, capped)


def test_bad_corrector_options_are_refused():
    with pytest.raises(ValueError, match="max_iters"):
        pn.odeint(rational, Y0, T, method="implicit_adams", options={"step_size": 0.1, "max_iters": 0})
    with pytest.raises(ValueError, match="max_order"):
        pn.odeint(rational, Y0, T, method="implicit_adams", options={"step_size": 0.1, "max_order": 13})
    with pytest.raises(ValueError, match="no corrector"):
        pn.odeint(rational, Y0, T, method="rk4", options={"step_size": 0.1, "max_iters": 2})
