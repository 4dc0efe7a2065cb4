"""The Python callables Julia calls, without Julia: the Jacobian and Jacobian-vector product from torch
against central finite differences (also through the fallback used when func is not transformable by
torch.func), written into Julia-style column-major buffers; and the GPU path's right-hand side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pynodeta.ode.backends.base import SolverConfig
from pynodeta.ode.backends.external import CountingRHS, FlatState
from pynodeta.ode.backends.julia_callbacks import JuliaJacobian, JuliaJVP
from pynodeta.ode.backends.julia_gpu import DLPackOnly, TorchViewCallback, gpu_solver_options
from pynodeta.ode.errors import NonFiniteStateError
from pynodeta.ode.stats import SolveStats

W = torch.tensor([[0.5, -1.0, 0.2], [0.3, 0.1, -0.7], [-0.4, 0.8, 0.6]], dtype=torch.float64)


def func(t, y):
    """y: (2, 3) batch; dy/dt = sin(y W^T) + t y^3, coupling the features within each row."""
    return torch.sin(y @ W.T.to(y.dtype)) + t * y**3


def func_using_autograd_inside(t, y):
    """The same field, with t y^3 computed as the gradient of sum(y^4 / 4) by torch.autograd.grad inside,
    as the adjoint's augmented system does: torch.func cannot transform it."""
    with torch.enable_grad():
        x = y.detach().requires_grad_(True)
        (cubes,) = torch.autograd.grad((x**4 / 4).sum(), x)
    return torch.sin(y @ W.T.to(y.dtype)) + t * cubes


def central_difference_jacobian(f, t: float, y: np.ndarray, h: float = 1e-6) -> np.ndarray:
    columns = []
    for j in range(y.size):
        e = np.zeros_like(y)
        e[j] = h
        columns.append((f(t, y + e) - f(t, y - e)) / (2 * h))
    return np.stack(columns, axis=1)


def counting(f, dtype=torch.float64) -> CountingRHS:
    return CountingRHS(f, FlatState.of(torch.zeros(2, 3, dtype=dtype), (torch.float32, torch.float64)), SolveStats())


Y = np.linspace(-0.8, 0.9, 6)
T = 0.7


def reference_jacobian() -> np.ndarray:
    return central_difference_jacobian(counting(func).evaluate, T, Y)


@pytest.mark.parametrize("f", [func, func_using_autograd_inside], ids=["torch.func", "fallback"])
def test_jacobian_written_into_a_column_major_matrix_matches_finite_differences(f):
    rhs = counting(f)
    J = np.zeros((6, 6), order="F")  # how a Julia Matrix looks through np.asarray
    JuliaJacobian(rhs)(J, Y, T)
    np.testing.assert_allclose(J, reference_jacobian(), rtol=1e-6, atol=1e-8)
    # torch.func: one evaluation; fallback: the failed attempt, then n + 1 forward-difference evaluations.
    assert rhs.stats.nfe == len(rhs.stats.t_evaluated) == (1 if f is func else 1 + 6 + 1)


@pytest.mark.parametrize("f", [func, func_using_autograd_inside], ids=["torch.func", "fallback"])
def test_jacobian_vector_product_matches_finite_differences(f):
    v = np.array([0.3, -1.2, 0.5, 2.0, 0.0, -0.7])
    rhs = counting(f)
    product = JuliaJVP(rhs)
    Jv = np.zeros(6)
    product(Jv, v, Y, T)
    np.testing.assert_allclose(Jv, reference_jacobian() @ v, rtol=1e-6, atol=1e-6)
    assert product.use_autograd == (f is func)
    assert rhs.stats.nfe == (1 if f is func else 1 + 2)  # forward mode: one; fallback: attempt + 2


def test_forward_mode_jvp_costs_one_evaluation_and_is_exact_to_rounding():
    rhs = counting(func)
    v = np.ones(6)
    Jv = np.zeros(6)
    JuliaJVP(rhs)(Jv, v, Y, T)
    J = torch.func.jacrev(lambda y: func(torch.tensor(T, dtype=torch.float64), y.reshape(2, 3)).reshape(-1))(
        torch.from_numpy(Y)
    )
    np.testing.assert_allclose(Jv, J.numpy() @ v, rtol=1e-13, atol=1e-13)
    assert rhs.stats.nfe == 1


def test_jvp_along_zero_is_zero_without_evaluations():
    rhs = counting(func_using_autograd_inside)
    product = JuliaJVP(rhs)
    product.use_autograd = False
    assert not product.product(np.zeros(6), Y, T).any() and rhs.stats.nfe == 0


def test_float32_state_gets_a_float32_jacobian_close_to_the_float64_one():
    rhs = counting(func, dtype=torch.float32)
    J = np.zeros((6, 6), dtype=np.float32, order="F")
    JuliaJacobian(rhs)(J, Y.astype(np.float32), T)
    np.testing.assert_allclose(J, reference_jacobian(), rtol=1e-4, atol=1e-5)


def test_gpu_callback_writes_dy_into_the_shared_du_view_and_counts_it():
    stats = SolveStats()
    callback = TorchViewCallback(func, torch.Size((2, 3)), stats)
    buffer = torch.zeros(6, dtype=torch.float64)
    du = buffer[:]  # a view, as DLPack hands over Julia's memory
    u = torch.from_numpy(Y.copy())
    callback(du, u, T)
    torch.testing.assert_close(buffer, func(torch.tensor(T, dtype=torch.float64), u.view(2, 3)).reshape(-1))
    assert stats.nfe == 1 and stats.t_evaluated == [T]


def test_gpu_callback_refuses_non_finite_output_and_keeps_the_error():
    callback = TorchViewCallback(lambda t, y: y / 0.0, torch.Size((2, 3)), SolveStats())
    with pytest.raises(NonFiniteStateError, match="func's output is not finite at t=0.7"):
        callback(torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64), T)
    assert isinstance(callback.error, NonFiniteStateError)


def test_gpu_path_refuses_per_element_tolerances():
    with pytest.raises(ValueError, match="per-element rtol is not available on the Julia GPU path"):
        gpu_solver_options(SolverConfig(method="tsit5", rtol=torch.full((6,), 1e-6)))
    one_number = torch.tensor(1e-6, dtype=torch.float64)
    assert gpu_solver_options(SolverConfig(method="tsit5", rtol=one_number))["reltol"] == 1e-6


def test_the_dlpack_only_view_shares_memory_and_hides_the_array_protocol():
    tensor = torch.arange(4.0, dtype=torch.float64)
    view = DLPackOnly(tensor)
    assert not hasattr(view, "__array__")  # so juliacall passes it to Julia as a plain object
    shared = torch.from_dlpack(view)
    shared[0] = 42.0
    assert tensor[0] == 42.0
