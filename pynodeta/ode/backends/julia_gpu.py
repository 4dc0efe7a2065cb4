"""The GPU path of ``backend="julia"`` (``backend_options={"gpu": True}``): the state never leaves the GPU.

The Julia side is the package extension ``PyNoDeTaCUDAExt`` (pynodeta/julia/ext), which Julia loads
only once CUDA.jl and DLPack.jl are imported; pynodeta imports them only here, so the CPU path never
loads CUDA.jl. The flat CUDA state goes to Julia by DLPack (a ``CuVector`` sharing torch's memory,
copied once on the device), each right-hand-side call receives torch views of Julia's ``du`` and ``u``
(DLPack again, no host copies), and the saved states come back as one CUDA tensor by DLPack.

torch and CUDA.jl queue work on different streams, so every hand-over synchronises: pynodeta syncs
torch's stream before Julia reads ``y0`` and before returning from each right-hand-side call, and
Julia syncs its own stream before Python reads ``u`` and before returning the results.

Limits (each refused with an error): float32/float64 states only, scalar tolerances only; the stiff
methods form their Jacobians by OrdinaryDiffEq's finite differences on the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import NonFiniteStateError
from ..stats import SolveStats
from .base import RHS, SolverConfig
from .external import ExternalOutcome, FlatState, output_times
from .julia_callbacks import raise_callback_error
from .julia_outcome import n_reached, record_statistics, retcode_status

__all__ = ["TorchViewCallback", "DLPackOnly", "check_gpu_state", "gpu_solver_options", "integrate_on_gpu"]


class TorchViewCallback:
    """The right-hand side Julia calls as ``f(du, u, t)`` with torch views of its CUDA vectors.

    Writes dy/dt into ``du`` in place, counts the evaluation in ``stats``, and waits for torch's stream
    before returning, so that Julia reads a finished ``du``. The first exception is kept for the caller.
    """

    def __init__(self, func: RHS, shape: torch.Size, stats: SolveStats):
        self.func, self.shape, self.stats = func, shape, stats
        self.error: BaseException | None = None

    def __call__(self, du: torch.Tensor, u: torch.Tensor, t) -> None:
        try:
            self._evaluate(du, u, float(t))
        except BaseException as err:
            self.error = self.error or err
            raise

    def _evaluate(self, du: torch.Tensor, u: torch.Tensor, t: float) -> None:
        self.stats.nfe += 1
        self.stats.t_evaluated.append(t)
        with torch.no_grad():
            dy = self.func(torch.tensor(t, dtype=u.dtype, device=u.device), u.view(self.shape))
        if not isinstance(dy, torch.Tensor) or dy.shape != self.shape:
            got = tuple(dy.shape) if isinstance(dy, torch.Tensor) else type(dy).__name__
            raise ValueError(f"func must return a tensor shaped like y0 {tuple(self.shape)}, got {got}")
        if not bool(torch.isfinite(dy).all()):
            raise NonFiniteStateError(t, "func's output")
        du.copy_(dy.reshape(-1))
        if du.is_cuda:
            torch.cuda.current_stream(du.device).synchronize()


class DLPackOnly:
    """A tensor seen only through the DLPack protocol.

    juliacall converts arguments that look like arrays (``__array__``) into Julia array wrappers, which
    would copy a CUDA tensor to the host or fail; this object has nothing but ``__dlpack__`` and
    ``__dlpack_device__``, so it reaches Julia as a plain Python object for ``DLPack.from_dlpack``.
    """

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __dlpack__(self, stream=None):
        return self.tensor.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()


def check_gpu_state(y0: torch.Tensor, config: SolverConfig) -> None:
    """Refuse what the GPU path cannot do, before Julia is loaded."""
    if not y0.is_cuda:
        raise ValueError(f"backend_options['gpu']=True needs a CUDA state, got y0 on {y0.device}; "
                         "move y0 (and func's parameters) to the GPU, or drop the option")
    if y0.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the Julia GPU path integrates float32 or float64 states, got {y0.dtype}")
    gpu_solver_options(config)


def gpu_solver_options(config: SolverConfig) -> dict[str, Any]:
    """``solve_flat_cuda``'s keywords; per-element tolerances (host vectors) are refused."""
    tolerances = {}
    for name, tol in (("rtol", config.rtol), ("atol", config.atol)):
        if isinstance(tol, torch.Tensor) and tol.numel() > 1:
            raise ValueError(f"per-element {name} is not available on the Julia GPU path; pass one number")
        value = float(tol)
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        tolerances[name] = value
    return dict(
        reltol=tolerances["rtol"],
        abstol=tolerances["atol"],
        maxiters=config.max_num_steps,
        first_step=config.first_step,
        min_step=config.min_step if config.min_step > 0 else None,
        max_step=config.max_step if np.isfinite(config.max_step) else None,
    )


def integrate_on_gpu(
    module, func: RHS, y0: torch.Tensor, t: torch.Tensor, config: SolverConfig, stats: SolveStats, method: Any
) -> torch.Tensor:
    """Solve with ``PyNoDeTa.solve_flat_cuda``; returns ``(len(t), *y0.shape)`` on y0's device."""
    callback = TorchViewCallback(func, y0.shape, stats)
    times = output_times(t)
    y0_flat = y0.detach().reshape(-1).contiguous()
    torch.cuda.current_stream(y0.device).synchronize()  # y0 is written before Julia reads it
    try:
        result = module.solve_flat_cuda(callback, DLPackOnly(y0_flat), times, method, torch.from_dlpack,
                                        **gpu_solver_options(config))
    except Exception as err:
        raise_callback_error(callback.error, err)
        raise
    record_statistics(result, stats)
    saved = result.u  # CUDA tensor (n_saved, size), sharing memory with Julia's result matrix
    n = n_reached(result.t, times)
    retcode = str(result.retcode)
    status = retcode_status(retcode, bool(result.u_finite))
    if status == "success" and n == len(t):
        # A copy owned by torch's allocator, so Julia's garbage collector may free its own buffer.
        return saved[:n].clone().reshape(len(t), *y0.shape)
    # Otherwise raise as the CPU path does, with the partial solution (copied to the host and back).
    failed = ExternalOutcome(saved[:n].detach().cpu().numpy(), status, float(result.t_reached),
                             float(result.dt), f"retcode {retcode}")
    return failed.result(FlatState.of(y0, solver_dtypes=(torch.float32, torch.float64)), t, config, stats)
