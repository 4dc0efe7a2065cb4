"""``backend="julia"``: OrdinaryDiffEq.jl solvers through juliacall, with a PyTorch right-hand side.

Julia integrates a flat state vector and calls back into Python for ``dy/dt`` (and, for the stiff
methods, for Jacobians from ``torch.func``); the callbacks read and write Julia's vectors through
zero-copy numpy views. The Julia side is the package PyNoDeTa, shipped inside pynodeta at
``pynodeta/julia`` and declared with its OrdinaryDiffEq dependencies in ``pynodeta/juliapkg.json`` so
that juliacall installs them on first use (docs/julia.md).

juliacall is imported on the first ``integrate`` (or by ``pynodeta_julia.init_julia()``), never when
pynodeta is imported. Notes:
- float32 states are integrated in Float32, float64 in Float64, other dtypes in Float64.
- CUDA tensors are copied to host memory for Julia and back, unless ``backend_options={"gpu": True}``
  selects the GPU path (PyNoDeTa's CUDA extension: the state stays on the device, see julia_gpu.py).
- Error control is OrdinaryDiffEq's (its controller and RMS norm over the whole state); the adjoint's
  ``StateNorm`` is accepted and not used.
- ``max_num_steps`` is OrdinaryDiffEq's ``maxiters`` (attempted steps); ``min_step`` is ``dtmin`` with
  ``force_dtmin=true``.

backend_options:
- ``"alg"``: any OrdinaryDiffEq algorithm object (built with diffeqpy or ``juliacall.Main.seval``),
  used with ``method="alg"``;
- ``"jacobian"``: ``"autograd"`` (default: ``jac`` and ``jvp`` from torch for rodas5, kencarp4 and
  ``alg``) or ``"finite-difference"`` (OrdinaryDiffEq's own);
- ``"gpu"``: ``True`` keeps a CUDA state on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pynodeta_julia import INSTALL_HINT
from pynodeta_julia import init_julia as _start_julia

from ..errors import BackendUnavailableError
from ..stats import SolveStats
from .base import RHS, Backend, SolverConfig
from .external import CountingRHS, FlatState, check_config, output_times, tolerance_to_numpy
from .julia_callbacks import JuliaCallback, JuliaJacobian, JuliaJVP, raise_callback_error
from .julia_outcome import outcome

__all__ = ["JuliaBackend", "JuliaOptions", "JULIA_METHODS", "INSTALL_HINT", "init_julia", "load_julia_module"]

# PyNoDeTa.METHODS in pynodeta/julia/src/PyNoDeTa.jl, plus "alg": the algorithm in backend_options.
JULIA_METHODS = ("tsit5", "dopri5", "bosh3", "vern7", "rodas5", "kencarp4", "alg")
# Methods that get torch Jacobians (explicit algorithms given as "alg" simply never call them).
_JACOBIAN_METHODS = frozenset({"rodas5", "kencarp4", "alg"})
_OPTIONS = ("alg", "gpu", "jacobian")


@dataclass(frozen=True)
class JuliaOptions:
    """The validated ``backend_options`` of a Julia solve.

    Attributes:
        method: what ``solve_flat`` receives: a method name, or the Julia algorithm for ``method="alg"``.
        jacobian: ``"autograd"`` or ``"finite-difference"``.
        gpu: keep a CUDA state on the GPU.
    """

    method: Any
    jacobian: str = "autograd"
    gpu: bool = False

    @classmethod
    def of(cls, config: SolverConfig) -> JuliaOptions:
        extra = dict(config.extra)
        unknown = set(extra) - set(_OPTIONS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)} for backend 'julia'; it accepts {list(_OPTIONS)}")
        jacobian = extra.get("jacobian", "autograd")
        if jacobian not in ("autograd", "finite-difference"):
            raise ValueError(f"jacobian must be 'autograd' or 'finite-difference', got {jacobian!r}")
        gpu = extra.get("gpu", False)
        if not isinstance(gpu, bool):
            raise ValueError(f"backend_options['gpu'] must be True or False, got {gpu!r}")
        return cls(_method_or_alg(config.method, extra.get("alg")), jacobian, gpu)


def _method_or_alg(method: str, alg: Any) -> Any:
    if method != "alg":
        if alg is not None:
            raise ValueError(f"backend_options['alg'] is run by method='alg', but method={method!r}: pass "
                             "method='alg' to use the algorithm, or drop backend_options['alg']")
        return method
    if alg is None:
        raise ValueError("method='alg' runs the OrdinaryDiffEq algorithm given as backend_options={'alg': ...}, "
                         "and none was given")
    if type(alg).__module__.split(".")[0] != "juliacall":
        raise ValueError(
            "backend_options['alg'] must be an OrdinaryDiffEq algorithm object from Julia, e.g. "
            "juliacall.Main.seval('RadauIIA5(autodiff = AutoFiniteDiff())') or diffeqpy's "
            f"ode.RadauIIA5(...), got {type(alg).__name__}"
        )
    return alg


class JuliaBackend(Backend):
    """Integrates with OrdinaryDiffEq.jl (Tsit5, DP5, BS3, Vern7, Rodas5P, KenCarp4, or any algorithm)."""

    name = "julia"
    differentiable = False

    def __init__(self):
        self._julia_module = None  # PyNoDeTa, loaded on the first integrate
        self._gpu_loaded = False

    def methods(self) -> Sequence[str]:
        return JULIA_METHODS

    def integrate(
        self, func: RHS, y0: torch.Tensor, t: torch.Tensor, config: SolverConfig, stats: SolveStats
    ) -> torch.Tensor:
        """Solve from ``y0`` at ``t[0]``; returns ``(len(t), *y0.shape)`` in y0's dtype and device."""
        check_config(config, self.name, JULIA_METHODS)
        options = JuliaOptions.of(config)
        stats.backend, stats.method = self.name, config.method
        if options.gpu:
            from .julia_gpu import check_gpu_state, integrate_on_gpu

            check_gpu_state(y0, config)
            if len(t) == 1:
                return y0.detach().unsqueeze(0).clone()
            return integrate_on_gpu(self._load(gpu=True), func, y0, t, config, stats, options.method)
        state = FlatState.of(y0, solver_dtypes=(torch.float32, torch.float64))
        solver_options = flat_solver_options(config, state.size)
        if len(t) == 1:
            return y0.detach().unsqueeze(0).clone()
        module = self._load()
        rhs = CountingRHS(func, state, stats)
        callback = JuliaCallback(rhs)
        use_torch_jacobian = options.jacobian == "autograd" and config.method in _JACOBIAN_METHODS
        jac, jvp = (JuliaJacobian(rhs), JuliaJVP(rhs)) if use_torch_jacobian else (None, None)
        times = output_times(t)
        try:
            result = module.solve_flat(callback, state.to_numpy(y0), times, options.method, jac=jac, jvp=jvp,
                                       **solver_options)
        except Exception as err:
            raise_callback_error(callback.error, err)
            raise
        states = np.asarray(result.u).T  # Julia's column-major (size, n_saved) -> (n_saved, size)
        return outcome(result, states, times, stats).result(state, t, config, stats)

    def _load(self, gpu: bool = False):
        if self._julia_module is None or (gpu and not self._gpu_loaded):
            self._julia_module = load_julia_module(gpu=gpu)
            self._gpu_loaded = self._gpu_loaded or gpu
        return self._julia_module


def flat_solver_options(config: SolverConfig, size: int) -> dict[str, Any]:
    """Tolerances and step-size settings as ``solve_flat``'s keywords (``None``: the solver's default)."""
    return dict(
        reltol=tolerance_to_numpy(config.rtol, size, "rtol"),
        abstol=tolerance_to_numpy(config.atol, size, "atol"),
        maxiters=config.max_num_steps,
        first_step=config.first_step,
        min_step=config.min_step if config.min_step > 0 else None,
        max_step=config.max_step if np.isfinite(config.max_step) else None,
    )


def load_julia_module(gpu: bool = False):
    """The PyNoDeTa Julia module (``pynodeta_julia.init_julia``), or BackendUnavailableError saying how."""
    try:
        return _start_julia(gpu=gpu)
    except ImportError as err:
        raise BackendUnavailableError(str(err)) from err


def init_julia(gpu: bool = False):
    """Start Julia and load PyNoDeTa now rather than on the first solve; returns the Julia module.

    To start Julia before torch is imported (needed on platforms where the reverse order crashes), use
    ``pynodeta_julia.init_julia()`` instead: importing this module imports torch.
    """
    return load_julia_module(gpu=gpu)
