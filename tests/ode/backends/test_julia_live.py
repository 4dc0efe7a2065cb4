"""backend="julia" with Julia itself: the paths added for algorithm objects, torch Jacobians, callback
errors, the start-up helper, diffeqpy interop and the GPU extension.

They need Julia and juliacall and run only with PYNODETA_TEST_JULIA=1 (the GPU case also needs CUDA;
the diffeqpy case needs diffeqpy). The rest of the backend is covered by test_backend_contract.py.
"""

from __future__ import annotations

import os

import pytest
import torch

import pynodeta as pn

pytestmark = [
    pytest.mark.julia,
    pytest.mark.skipif(os.environ.get("PYNODETA_TEST_JULIA") != "1",
                       reason="needs Julia and juliacall (docs/julia.md); set PYNODETA_TEST_JULIA=1 to run"),
]

A = torch.tensor([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.5]], dtype=torch.float64)
Y0 = torch.tensor([[1.0, 0.0, -0.5], [0.2, 0.7, 0.1]], dtype=torch.float64)
T = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)


def linear(t, y):
    return y @ A.T


def exact(y0, t):
    return torch.stack([y0 @ torch.linalg.matrix_exp(A * (tk - t[0])).T for tk in t])


def van_der_pol(t, y):
    """Stiff for mu = 100; y: (2,)."""
    mu = 100.0
    return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def julia_main():
    import pynodeta_julia

    pynodeta_julia.init_julia()
    import juliacall

    return juliacall.Main


def test_an_ordinarydiffeq_algorithm_object_runs_with_pynodeta_glue():
    alg = julia_main().seval("import OrdinaryDiffEqRosenbrock, ADTypes; "
                             "OrdinaryDiffEqRosenbrock.Rodas4(autodiff = ADTypes.AutoFiniteDiff())")
    sol = pn.solve(linear, Y0, T, method="alg", backend="julia", backend_options={"alg": alg},
                   controller=pn.IController(rtol=1e-8, atol=1e-10))
    torch.testing.assert_close(sol.ys, exact(Y0, T), rtol=1e-5, atol=1e-6)
    assert sol.stats.nfe > 0 and sol.stats.n_accepted == len(sol.stats.step_sizes)


@pytest.mark.parametrize("method", ["rodas5", "kencarp4"])
def test_torch_jacobians_give_the_same_solution_with_fewer_evaluations(method):
    y0, t = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    runs = {
        jacobian: pn.solve(van_der_pol, y0, t, method=method, backend="julia",
                           controller=pn.IController(rtol=1e-7, atol=1e-9), backend_options={"jacobian": jacobian})
        for jacobian in ("autograd", "finite-difference")
    }
    torch.testing.assert_close(runs["autograd"].ys, runs["finite-difference"].ys, rtol=1e-4, atol=1e-5)
    assert runs["autograd"].stats.nfe < runs["finite-difference"].stats.nfe


def test_an_exception_in_func_comes_back_unchanged():
    def broken(t, y):
        if t > 0.5:
            raise KeyError("inside func")
        return -y

    with pytest.raises(KeyError, match="inside func") as info:
        pn.solve(broken, Y0, T, method="tsit5", backend="julia")
    assert info.value.__cause__ is not info.value


def test_the_start_up_helper_returns_the_loaded_package():
    import pynodeta_julia

    module = pynodeta_julia.init_julia()
    assert sorted(module.METHODS.keys()) == ["bosh3", "dopri5", "kencarp4", "rodas5", "tsit5", "vern7"]


def test_a_diffeqpy_algorithm_runs_in_the_shared_julia_environment():
    ode = pytest.importorskip("diffeqpy.ode")
    sol = pn.solve(linear, Y0, T, method="alg", backend="julia", backend_options={"alg": ode.Vern9()},
                   controller=pn.IController(rtol=1e-10, atol=1e-12))
    torch.testing.assert_close(sol.ys, exact(Y0, T), rtol=1e-8, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_gpu_path_keeps_the_state_on_the_device_and_matches_the_exact_solution(dtype):
    y0 = Y0.to("cuda", dtype)
    before = y0.clone()
    matrix = A.to("cuda", dtype)
    sol = pn.solve(lambda t, y: y @ matrix.T, y0, T.to("cuda", dtype), method="tsit5", backend="julia",
                   backend_options={"gpu": True}, controller=pn.IController(rtol=1e-6, atol=1e-8))
    assert sol.ys.device == y0.device and sol.ys.dtype == dtype
    torch.testing.assert_close(sol.ys.cpu().double(), exact(Y0, T), rtol=1e-4, atol=1e-5)
    assert torch.equal(y0, before)  # Julia integrated its own copy
