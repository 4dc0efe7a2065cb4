"""backend="julia" without Julia: backend_options, what the backend hands to PyNoDeTa.solve_flat (checked
with a stand-in module that integrates by explicit Euler and calls the callables as Julia would), how a
callback's exception comes back, and the torch-free start-up helper."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pynodeta_julia
from pynodeta.ode.backends import SolverConfig
from pynodeta.ode.backends.julia import JuliaBackend
from pynodeta.ode.stats import SolveStats

Y0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=torch.float64)  # a (batch, features) state
T = torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
A = torch.tensor([[-1.0, 0.4], [-0.2, -0.6]], dtype=torch.float64)


def func(t, y):
    """dy/dt = tanh(y) A^T + t y^2: nonlinear, so its Jacobian depends on the state."""
    return torch.tanh(y) @ A.T + t * y**2


def exact_flat_jacobian(t: float, y: torch.Tensor) -> torch.Tensor:
    """d func / d y on the flat (row-major) state: block-diagonal over the batch."""
    blocks = [A * (1 - torch.tanh(row) ** 2) + torch.diag(2 * t * row) for row in y]
    return torch.block_diag(*blocks)


def julia_value():
    """Something that looks like a juliacall wrapper of a Julia object (its type's module is juliacall)."""
    return type("AnyValue", (), {"__module__": "juliacall"})()


class EulerModule:
    """Stands in for the Julia module PyNoDeTa: explicit Euler between the output times, calling the
    callables with Julia's argument order and buffers (column-major matrices), as OrdinaryDiffEq would."""

    def __init__(self, raise_from_callback=False):
        self.calls, self.raise_from_callback = [], raise_from_callback

    def solve_flat(self, f, u0, times, method, *, jac, jvp, reltol, abstol, maxiters, first_step, min_step,
                   max_step):
        self.calls.append(dict(method=method, jac=jac, jvp=jvp))
        u, saved = np.array(u0), [np.array(u0)]
        for t0, t1 in zip(times[:-1], times[1:]):
            du = np.empty_like(u)
            try:
                f(du, u, t0)
            except Exception as err:
                if self.raise_from_callback:
                    raise  # what PythonCall does: the callback's exception object itself comes back
                raise RuntimeError("JuliaError: a Python callback failed") from err
            u = u + (t1 - t0) * du
            saved.append(u)
        if jac is not None:
            self.J = np.zeros((u.size, u.size), order="F")
            jac(self.J, u, float(times[-1]))
            self.Jv, self.v = np.zeros(u.size), np.linspace(-1.0, 1.0, u.size)
            jvp(self.Jv, self.v, u, float(times[-1]))
        return SimpleNamespace(t=np.array(times), u=np.asfortranarray(np.stack(saved, axis=1)), retcode="Success",
                               u_finite=True, t_reached=float(times[-1]), dt=0.1, step_sizes=np.diff(times),
                               nf=len(times), naccept=len(times) - 1, nreject=0, njacs=int(jac is not None))


def solve_with(module, method="tsit5", **extra):
    backend = JuliaBackend()
    backend._julia_module = module
    config = SolverConfig(method=method, extra=extra)
    return backend.integrate(func, Y0, T, config, SolveStats())


def test_the_stiff_methods_get_the_exact_jacobian_and_jvp_of_func_on_the_flat_state():
    module = EulerModule()
    ys = solve_with(module, method="rodas5")
    y_end = ys[-1]
    J = exact_flat_jacobian(float(T[-1]), y_end)
    np.testing.assert_allclose(module.J, J.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(module.Jv, J.numpy() @ module.v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("method", "extra"), [("tsit5", {}), ("kencarp4", {"jacobian": "finite-difference"})])
def test_no_torch_jacobian_for_explicit_methods_or_when_finite_differences_are_asked_for(method, extra):
    module = EulerModule()
    solve_with(module, method=method, **extra)
    assert module.calls[0]["jac"] is None and module.calls[0]["jvp"] is None


def test_an_algorithm_object_is_handed_to_julia_in_place_of_the_method_name():
    module, alg = EulerModule(), julia_value()
    ys = solve_with(module, method="alg", alg=alg)
    assert module.calls[0]["method"] is alg and module.calls[0]["jac"] is not None
    # Euler's answer, so the outputs are the stand-in's: the backend only routed them.
    expected = Y0 + 0.1 * func(torch.tensor(0.0, dtype=torch.float64), Y0)
    torch.testing.assert_close(ys[1], expected)


@pytest.mark.parametrize("raise_from_callback", [True, False], ids=["same-object", "wrapped"])
def test_an_exception_in_func_comes_back_as_itself_and_never_as_its_own_cause(raise_from_callback):
    def broken(t, y):
        raise KeyError("inside func")

    backend = JuliaBackend()
    backend._julia_module = EulerModule(raise_from_callback)
    with pytest.raises(KeyError, match="inside func") as info:
        backend.integrate(broken, Y0, T, SolverConfig(method="tsit5"), SolveStats())
    assert info.value.__cause__ is not info.value
    if not raise_from_callback:
        assert isinstance(info.value.__cause__, RuntimeError)  # chained to the Julia error that wrapped it


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("tsit5", {"algorithm": 1}, r"unknown options \['algorithm'\] for backend 'julia'; it accepts"),
        ("alg", {}, "method='alg' runs the OrdinaryDiffEq algorithm given as backend_options"),
        ("rodas5", {"alg": "sentinel"}, "backend_options\\['alg'\\] is run by method='alg', but method='rodas5'"),
        ("alg", {"alg": "RadauIIA5()"}, "must be an OrdinaryDiffEq algorithm object from Julia.*got str"),
        ("rodas5", {"jacobian": "exact"}, "jacobian must be 'autograd' or 'finite-difference', got 'exact'"),
        ("tsit5", {"gpu": "yes"}, "backend_options\\['gpu'\\] must be True or False"),
        ("tsit5", {"gpu": True}, "needs a CUDA state, got y0 on cpu"),
    ],
)
def test_bad_backend_options_are_refused_before_julia_is_loaded(monkeypatch, method, extra, message):
    monkeypatch.setitem(sys.modules, "juliacall", None)
    if extra.get("alg") == "sentinel":
        extra = {"alg": julia_value()}
    with pytest.raises(ValueError, match=message):
        JuliaBackend().integrate(func, Y0, T, SolverConfig(method=method, extra=extra), SolveStats())


def test_the_start_up_helper_imports_neither_torch_nor_pynodeta_nor_juliacall():
    code = "import sys, pynodeta_julia; print(sorted({'torch', 'pynodeta', 'juliacall'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_start_up_errors_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "juliacall", None)
    with pytest.raises(ImportError, match=r'(?s)juliacall is not installed.*pip install "pynodeta\[julia\]"'):
        pynodeta_julia.init_julia()


def fake_juliacall(failing_code: str):
    """A juliacall whose Main.seval fails on ``failing_code`` (a Julia package that will not load)."""

    def seval(code):
        if code == failing_code:
            raise RuntimeError(f"ArgumentError: Package not found: {code}")

    return SimpleNamespace(Main=SimpleNamespace(seval=seval, PyNoDeTa="the module"))


def test_a_missing_julia_package_is_reported_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "juliacall", fake_juliacall("import PyNoDeTa"))
    with pytest.raises(ImportError, match="(?s)PyNoDeTa Julia package could not be loaded.*pynodeta/juliapkg.json"):
        pynodeta_julia.init_julia()


def test_the_gpu_packages_are_loaded_only_when_asked_for(monkeypatch):
    monkeypatch.setitem(sys.modules, "juliacall", fake_juliacall("import CUDA, DLPack"))
    assert pynodeta_julia.init_julia() == "the module"  # the CPU path does not touch CUDA.jl
    with pytest.raises(ImportError, match="add_gpu_packages"):
        pynodeta_julia.init_julia(gpu=True)
