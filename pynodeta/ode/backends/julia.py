"""``backend="julia"``: OrdinaryDiffEq.jl solvers through juliacall, with a PyTorch right-hand side.

Julia integrates a flat state vector and calls back into Python for ``dy/dt``; the callback reads the
state and writes the derivative through zero-copy numpy views of Julia's vectors. The Julia side is the
package under ``julia/`` (``PyNoDeTa.solve_flat``), declared with its OrdinaryDiffEq dependencies in
``pynodeta/juliapkg.json`` so that juliacall installs them on first use.

juliacall is imported on the first ``integrate``, never when pynodeta is imported. Notes:
- float32 states are integrated in Float32, float64 in Float64, other dtypes in Float64.
- CUDA tensors are copied to host memory for Julia and the results copied back to the device; each
  right-hand-side call also crosses host <-> device. A zero-copy path (DLPack into a CuArray state) is
  the natural next step.
- Error control is OrdinaryDiffEq's (its controller and RMS norm over the whole state); the adjoint's
  ``StateNorm`` is accepted and not used.
- ``max_num_steps`` is OrdinaryDiffEq's ``maxiters`` (attempted steps); ``min_step`` is ``dtmin`` with
  ``force_dtmin=true``.
- If Python and Julia crash on import in your environment, ``import juliacall`` before ``import torch``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import BackendUnavailableError
from ..stats import SolveStats
from .base import RHS, Backend, SolverConfig
from .external import CountingRHS, ExternalOutcome, FlatState, check_config, output_times, tolerance_to_numpy

__all__ = ["JuliaBackend", "JULIA_METHODS", "INSTALL_HINT"]

# Must match PyNoDeTa.METHODS in julia/src/PyNoDeTa.jl.
JULIA_METHODS = ("tsit5", "dopri5", "bosh3", "vern7", "rodas5", "kencarp4")

INSTALL_HINT = (
    "backend='julia' needs juliacall and a Julia installation. Install them with\n"
    '    pip install "pynodeta[julia]"\n'
    "then run once with network access: the first `import juliacall` downloads Julia (if none is on PATH) "
    "and installs the Julia packages declared in pynodeta/juliapkg.json (OrdinaryDiffEq solvers and the "
    "local PyNoDeTa package), then precompiles them (several minutes). With PYTHON_JULIAPKG_OFFLINE=yes "
    "nothing is downloaded, so that first run must already have happened."
)

# OrdinaryDiffEq return code -> ExternalOutcome status.
_RETCODES = {
    "Success": "success",
    "MaxIters": "max_steps",
    "DtLessThanMin": "step_underflow",
    "Unstable": "non_finite",
    "DtNaN": "non_finite",
}


class JuliaBackend(Backend):
    """Integrates with OrdinaryDiffEq.jl (Tsit5, DP5, BS3, Vern7, Rodas5P, KenCarp4) through juliacall."""

    name = "julia"
    differentiable = False

    def __init__(self):
        self._julia_module = None  # PyNoDeTa, loaded on the first integrate

    def methods(self) -> Sequence[str]:
        return JULIA_METHODS

    def integrate(
        self, func: RHS, y0: torch.Tensor, t: torch.Tensor, config: SolverConfig, stats: SolveStats
    ) -> torch.Tensor:
        """Solve from ``y0`` at ``t[0]``; returns ``(len(t), *y0.shape)`` in y0's dtype and device."""
        check_config(config, self.name, JULIA_METHODS)
        if config.extra:
            raise ValueError(f"unknown options {sorted(config.extra)} for backend 'julia'")
        stats.backend, stats.method = self.name, config.method
        state = FlatState.of(y0, solver_dtypes=(torch.float32, torch.float64))
        options = dict(
            reltol=tolerance_to_numpy(config.rtol, state.size, "rtol"),
            abstol=tolerance_to_numpy(config.atol, state.size, "atol"),
            maxiters=config.max_num_steps,
            first_step=config.first_step,
            min_step=config.min_step if config.min_step > 0 else None,
            max_step=config.max_step if np.isfinite(config.max_step) else None,
        )
        if len(t) == 1:
            return y0.detach().unsqueeze(0).clone()
        module = self._load()
        rhs = JuliaCallback(CountingRHS(func, state, stats))
        times = output_times(t)
        try:
            result = module.solve_flat(rhs, state.to_numpy(y0), times, config.method, **options)
        except Exception as err:
            # A Python exception raised in the callback reaches us wrapped in a Julia error: re-raise it.
            if rhs.error is not None:
                raise rhs.error from err
            raise
        return _outcome(result, times, stats).result(state, t, config, stats)

    def _load(self):
        if self._julia_module is None:
            self._julia_module = load_julia_module()
        return self._julia_module


def load_julia_module():
    """Import juliacall and the PyNoDeTa Julia package, or raise BackendUnavailableError saying how."""
    try:
        import juliacall
    except ImportError as err:
        raise BackendUnavailableError(f"juliacall is not installed. {INSTALL_HINT}") from err
    except Exception as err:  # juliapkg failing to find or install Julia raises plain exceptions
        raise BackendUnavailableError(f"juliacall could not start Julia ({err}). {INSTALL_HINT}") from err
    try:
        juliacall.Main.seval("import PyNoDeTa")
    except Exception as err:
        raise BackendUnavailableError(
            f"the PyNoDeTa Julia package could not be loaded ({err}). {INSTALL_HINT}"
        ) from err
    return juliacall.Main.PyNoDeTa


class JuliaCallback:
    """The Python function Julia calls as ``f(du, u, t)``: writes dy/dt into Julia's ``du`` in place.

    ``u`` and ``du`` arrive as juliacall array wrappers; ``np.asarray`` views their memory without a copy.
    The first exception raised here is kept, so that the caller can re-raise it unwrapped.
    """

    def __init__(self, rhs: CountingRHS):
        self.rhs = rhs
        self.error: BaseException | None = None

    def __call__(self, du, u, t) -> None:
        try:
            self.rhs.evaluate_into(np.asarray(du), np.asarray(u), float(t))
        except BaseException as err:
            self.error = self.error or err
            raise


def _outcome(result, times: np.ndarray, stats: SolveStats) -> ExternalOutcome:
    """Map PyNoDeTa.solve_flat's named tuple to an ExternalOutcome, and its statistics into ``stats``."""
    stats.n_accepted, stats.n_rejected = int(result.naccept), int(result.nreject)
    stats.n_steps = stats.n_accepted + stats.n_rejected
    stats.step_sizes.extend(float(h) for h in np.asarray(result.step_sizes))
    saved_t = np.asarray(result.t, dtype=np.float64)
    # Keep only saved times that are the requested ones, in order: the prefix the solver reached.
    n_reached = 0
    while n_reached < min(len(saved_t), len(times)) and saved_t[n_reached] == times[n_reached]:
        n_reached += 1
    ys = np.asarray(result.u).T[:n_reached].copy()  # Julia's (size, n_saved) column-major -> (n, size)
    retcode = str(result.retcode)
    status = _RETCODES.get(retcode, "failure")
    return ExternalOutcome(ys, status, float(result.t_reached), float(result.dt), f"retcode {retcode}")
