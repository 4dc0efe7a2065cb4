"""The Julia backend's Python side, exercised without Julia: lazy import, the install message, the
options, the callback that Julia calls, exception chaining, and the mapping of OrdinaryDiffEq's results
to tensors and errors."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pynodeta.ode.backends import SolverConfig
from pynodeta.ode.backends.external import CountingRHS, FlatState
from pynodeta.ode.backends.julia import JuliaBackend, JuliaCallback
from pynodeta.ode.backends.julia_outcome import outcome, retcode_status
from pynodeta.ode.errors import (
    BackendUnavailableError,
    MaxStepsReachedError,
    NonFiniteStateError,
    ODESolveError,
    StepSizeUnderflowError,
)
from pynodeta.ode.stats import SolveStats


def test_importing_pynodeta_and_the_backend_does_not_import_juliacall():
    code = "import sys, pynodeta, pynodeta.ode.backends.julia; print('juliacall' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_juliacall_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "juliacall", None)  # makes `import juliacall` raise ImportError
    y0, t = torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match=r'pip install "pynodeta\[julia\]"') as info:
        JuliaBackend().integrate(lambda t, y: -y, y0, t, SolverConfig(method="tsit5"), SolveStats())
    assert "PYTHON_JULIAPKG_OFFLINE" in str(info.value) and "network" in str(info.value)


def test_settings_are_checked_before_julia_is_loaded(monkeypatch):
    monkeypatch.setitem(sys.modules, "juliacall", None)
    y0, t = torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown method 'radau' for backend 'julia'"):
        JuliaBackend().integrate(lambda t, y: -y, y0, t, SolverConfig(method="radau"), SolveStats())


def test_callback_writes_the_derivative_in_place_and_counts_it():
    stats = SolveStats()
    state = FlatState.of(torch.zeros(2, 2, dtype=torch.float32), solver_dtypes=(torch.float32, torch.float64))
    callback = JuliaCallback(CountingRHS(lambda t, y: -t * y, state, stats))
    u, du = np.arange(4, dtype=np.float32), np.zeros(4, dtype=np.float32)
    callback(du, u, 0.5)
    np.testing.assert_array_equal(du, -0.5 * u)
    assert stats.nfe == 1 and stats.t_evaluated == [0.5]


def test_callback_keeps_the_first_error_for_the_caller():
    def broken(t, y):
        raise KeyError("inside func")

    callback = JuliaCallback(CountingRHS(broken, FlatState.of(torch.zeros(3)), SolveStats()))
    with pytest.raises(KeyError):
        callback(np.zeros(3), np.zeros(3), 0.0)
    assert isinstance(callback.error, KeyError)


def julia_result(retcode, saved_t, size=2, **fields):
    """What PyNoDeTa.solve_flat returns, with Julia's column-major (size, n_saved) state matrix."""
    saved_t = np.asarray(saved_t, dtype=np.float64)
    u = np.asfortranarray(np.stack([saved_t + i for i in range(size)]))
    defaults = dict(t_reached=saved_t[-1], dt=1e-3, step_sizes=[0.5, 0.5], nf=20, naccept=2, nreject=1,
                    njacs=0, u_finite=True)
    return SimpleNamespace(retcode=retcode, t=saved_t, u=u, **{**defaults, **fields})


TIMES = np.array([0.0, 1.0, 2.0])
STATE = FlatState.of(torch.zeros(2, dtype=torch.float64))


def finish(result, stats=None):
    stats = stats or SolveStats(backend="julia")
    t = torch.as_tensor(TIMES)
    config = SolverConfig(method="tsit5", max_num_steps=7)
    return outcome(result, np.asarray(result.u).T, TIMES, stats).result(STATE, t, config, stats)


def test_success_maps_states_and_statistics():
    stats = SolveStats(backend="julia")
    ys = finish(julia_result("Success", TIMES), stats)
    torch.testing.assert_close(ys, torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]], dtype=torch.float64))
    assert (stats.n_steps, stats.n_accepted, stats.n_rejected) == (3, 2, 1)
    assert stats.step_sizes == [0.5, 0.5]


def test_max_iters_keeps_the_partial_solution():
    with pytest.raises(MaxStepsReachedError, match="max_num_steps=7") as info:
        finish(julia_result("MaxIters", [0.0, 1.0], t_reached=1.4))
    assert torch.equal(info.value.t, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert info.value.ys.shape == (2, 2) and info.value.t_reached == 1.4


def test_saved_times_that_were_not_requested_are_not_outputs():
    with pytest.raises(MaxStepsReachedError) as info:
        finish(julia_result("MaxIters", [0.0, 1.0, 1.4], t_reached=1.4))
    assert len(info.value.t) == 2


@pytest.mark.parametrize(
    ("retcode", "finite", "error", "message"),
    [
        ("DtLessThanMin", True, StepSizeUnderflowError, "step size underflow at t=1.5"),
        # A collapsed step size with min_step (force_dtmin) comes back as Unstable with a finite state.
        ("Unstable", True, StepSizeUnderflowError, "step size underflow at t=1.5"),
        ("Unstable", False, NonFiniteStateError, "the state is not finite at t=1.5"),
        ("DtNaN", True, NonFiniteStateError, "the state is not finite"),
        ("ConvergenceFailure", True, ODESolveError, "retcode ConvergenceFailure"),
    ],
)
def test_failure_return_codes_map_to_pynodeta_errors(retcode, finite, error, message):
    with pytest.raises(error, match=message):
        finish(julia_result(retcode, [0.0, 1.0], t_reached=1.5, u_finite=finite))


@pytest.mark.parametrize("retcode", ["Success", "Terminated", "StalledSuccess"])
def test_success_like_return_codes_give_the_solution(retcode):
    ys = finish(julia_result(retcode, TIMES))
    assert ys.shape == (3, 2)


def test_retcode_status_is_a_function_of_the_code_and_the_finiteness_of_the_state():
    assert [retcode_status("Unstable", finite) for finite in (True, False)] == ["step_underflow", "non_finite"]
    assert [retcode_status("MaxIters", finite) for finite in (True, False)] == ["max_steps", "max_steps"]
    assert retcode_status("Terminated", False) == "success"
    assert retcode_status("Failure", True) == "failure"


def test_success_with_missing_outputs_is_still_an_error():
    with pytest.raises(ODESolveError, match="success with 2 of 3 outputs"):
        finish(julia_result("Terminated", [0.0, 1.0]))


def test_bad_tolerance_is_refused_before_julia_is_loaded(monkeypatch):
    monkeypatch.setitem(sys.modules, "juliacall", None)
    y0, t = torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="rtol has 3 elements but the flat state has 2"):
        JuliaBackend().integrate(lambda t, y: -y, y0, t, SolverConfig(method="tsit5", rtol=torch.ones(3)),
                                 SolveStats())


def test_the_python_method_list_is_the_julia_one_plus_alg():
    import re
    from pathlib import Path

    from pynodeta.ode.backends.julia import JULIA_METHODS

    source = (Path(__file__).resolve().parents[3] / "pynodeta" / "julia" / "src" / "PyNoDeTa.jl").read_text()
    table = source.split("const METHODS = Dict{String, Function}(")[1].split("\n)")[0]
    assert set(re.findall(r'"(\w+)" =>', table)) | {"alg"} == set(JULIA_METHODS)
