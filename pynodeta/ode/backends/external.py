"""The layer shared by backends whose solver lives outside PyTorch (SciPy, Julia).

Such a solver sees one flat float vector and calls back into Python for ``dy/dt``. This module does
everything around that call that does not depend on which solver it is:

- flattening the state to one contiguous numpy vector and back (``FlatState``), including the
  device/dtype round trip: CUDA tensors are copied to host memory for the solver and the results
  copied back to the device (a zero-copy DLPack / CuArray path is future work);
- the right-hand-side wrapper that calls ``func`` under ``torch.no_grad()``, counts evaluations and
  records the times into ``SolveStats`` (``CountingRHS``);
- tolerances as floats or per-element tensors, output times, and options the external solvers cannot
  honour (rejected with a clear error, never silently dropped);
- turning a solver outcome into a tensor or into pynodeta's errors (``ExternalOutcome``).

External backends are not differentiable: gradients come from the adjoint, which is one more
``integrate`` of the augmented system through the same backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MaxStepsReachedError, NonFiniteStateError, ODESolveError, StepSizeUnderflowError
from ..norms import StateNorm
from ..stats import SolveStats
from .base import RHS, SolverConfig

__all__ = [
    "FlatState",
    "CountingRHS",
    "ExternalOutcome",
    "tolerance_to_numpy",
    "output_times",
    "check_config",
]

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


@dataclass(frozen=True)
class FlatState:
    """How a state tensor maps to the flat numpy vector an external solver integrates.

    Attributes:
        shape: the state's shape, e.g. ``(batch, features)``.
        dtype, device: the state's torch dtype and device (results are returned there).
        solver_dtype: numpy dtype of the flat vector the solver works on.
    """

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    solver_dtype: type

    @classmethod
    def of(cls, y0: torch.Tensor, solver_dtypes: Iterable[torch.dtype] = (torch.float64,)) -> FlatState:
        """Layout of ``y0``; the solver keeps y0's dtype if it is in ``solver_dtypes``, else float64."""
        if not y0.dtype.is_floating_point:
            raise ValueError(f"y0 must be a real floating-point tensor for external backends, got {y0.dtype}")
        kept = y0.dtype if y0.dtype in tuple(solver_dtypes) else torch.float64
        return cls(y0.shape, y0.dtype, y0.device, _NUMPY_DTYPES[kept])

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_numpy(self, y: torch.Tensor) -> np.ndarray:
        """``y: (*shape)`` -> contiguous flat numpy vector ``(size,)`` of the solver dtype (a host copy)."""
        flat = y.detach().reshape(-1)
        if flat.dtype not in _NUMPY_DTYPES:  # float16/bfloat16: numpy has no bfloat16, so widen in torch first
            flat = flat.to(torch.float64)
        return np.ascontiguousarray(flat.cpu().numpy(), dtype=self.solver_dtype)

    def to_torch(self, y: np.ndarray) -> torch.Tensor:
        """Numpy ``(size,)`` or ``(n, size)`` -> ``(*shape)`` or ``(n, *shape)`` on the state's device."""
        out = torch.as_tensor(np.asarray(y)).to(device=self.device, dtype=self.dtype)
        return out.reshape(*y.shape[:-1], *self.shape)


class CountingRHS:
    """``func(t, y)`` as a numpy callback for an external solver, with NFE and time bookkeeping.

    Every call increments ``stats.nfe`` and appends ``t`` to ``stats.t_evaluated`` (calls made to form
    Jacobians included, so ``len(stats.t_evaluated) == stats.nfe``). ``func`` runs under
    ``torch.no_grad()``; the adjoint's augmented system enables grad itself where it needs it.

    Args:
        func: the right-hand side ``func(t, y) -> dy/dt`` on tensors shaped like the state.
        state: the layout of the state.
        stats: where evaluations are recorded.
    """

    def __init__(self, func: RHS, state: FlatState, stats: SolveStats):
        self.func, self.state, self.stats = func, state, stats

    def tensor_args(self, t: float, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, y)`` as the tensors ``func`` expects: 0-d time and the state, in y0's dtype and device."""
        t_tensor = torch.tensor(t, dtype=self.state.dtype, device=self.state.device)
        y_tensor = torch.from_numpy(np.asarray(y)).to(device=self.state.device, dtype=self.state.dtype)
        return t_tensor, y_tensor.reshape(self.state.shape)

    def evaluate(self, t: float, y: np.ndarray) -> np.ndarray:
        """dy/dt at ``(t, y)``: flat numpy vector of the solver dtype."""
        self.stats.nfe += 1
        self.stats.t_evaluated.append(float(t))
        with torch.no_grad():
            dy = self.func(*self.tensor_args(t, y))
        if not isinstance(dy, torch.Tensor) or dy.shape != self.state.shape:
            got = tuple(dy.shape) if isinstance(dy, torch.Tensor) else type(dy).__name__
            raise ValueError(f"func must return a tensor shaped like y0 {tuple(self.state.shape)}, got {got}")
        flat = self.state.to_numpy(dy)
        if not np.isfinite(flat).all():
            raise NonFiniteStateError(float(t), "func's output")
        return flat

    __call__ = evaluate

    def evaluate_into(self, dy: np.ndarray, y: np.ndarray, t: float) -> None:
        """In-place form for solvers that own the buffers: writes dy/dt at ``(t, y)`` into ``dy``."""
        np.copyto(dy, self.evaluate(t, y))


def tolerance_to_numpy(tol: float | torch.Tensor, size: int, name: str) -> float | np.ndarray:
    """A tolerance as the solver wants it: a float, or a float64 vector ``(size,)`` for per-element ones."""
    if isinstance(tol, torch.Tensor):
        values = tol.detach().reshape(-1).cpu().to(torch.float64).numpy()
        if values.size == 1:
            return _non_negative(float(values[0]), name)
        if values.size != size:
            raise ValueError(f"{name} has {values.size} elements but the flat state has {size}")
        if not (values >= 0).all():
            raise ValueError(f"{name} must be >= 0 everywhere, got min {values.min():.3g}")
        return values
    return _non_negative(float(tol), name)


def _non_negative(value: float, name: str) -> float:
    """0 is a purely relative or absolute tolerance, as the solvers take it (both 0 is refused earlier)."""
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def output_times(t: torch.Tensor) -> np.ndarray:
    """The requested output times as float64 numpy (the solvers keep time in float64)."""
    return t.detach().cpu().to(torch.float64).numpy()


def check_config(config: SolverConfig, backend: str, methods: Iterable[str]) -> None:
    """Reject settings the external solvers cannot honour, rather than ignoring them.

    They bring their own step-size controller and error norm. The adjoint's ``StateNorm`` (mixed norm,
    or seminorm) is accepted and the solver's own RMS norm over the whole state is used instead, which
    controls every part of the state (more conservative, never less accurate). Other custom norms, the
    PI controller and non-default controller constants are rejected.
    """
    if config.method not in tuple(methods):
        raise ValueError(
            f"unknown method {config.method!r} for backend {backend!r}; choose one of {sorted(methods)}"
        )
    if config.controller != "i":
        raise ValueError(
            f"controller={config.controller!r} is not available with backend {backend!r}, which uses its "
            "solver's own step-size controller; use backend='torch' for the PI controller"
        )
    if config.norm is not None and not isinstance(config.norm, StateNorm):
        raise ValueError(
            f"a custom error norm is not supported by backend {backend!r} (its solver uses its own RMS "
            "norm); use backend='torch' for options={'norm': ...}"
        )
    defaults = SolverConfig(method=config.method)
    for name in ("safety", "ifactor", "dfactor"):
        if getattr(config, name) != getattr(defaults, name):
            raise ValueError(f"{name} cannot be set with backend {backend!r}; its solver has its own")
    if config.step_size is not None:
        raise ValueError(f"step_size is for fixed-grid methods; backend {backend!r} has only adaptive ones")


@dataclass
class ExternalOutcome:
    """What an external solve produced, before it becomes a tensor or an error.

    Attributes:
        ys: the states reached at the first ``len(ys)`` requested times, numpy ``(n_reached, size)``.
        status: ``"success"``, ``"max_steps"``, ``"step_underflow"``, ``"non_finite"`` or ``"failure"``.
        t_reached: the solver time where it stopped.
        dt: the last step size tried (for underflow reports).
        message: the solver's own words, quoted in ``"failure"`` errors.
    """

    ys: np.ndarray
    status: str
    t_reached: float
    dt: float = float("nan")
    message: str = ""

    def result(
        self, state: FlatState, t: torch.Tensor, config: SolverConfig, stats: SolveStats
    ) -> torch.Tensor:
        """The solution ``(len(t), *shape)`` on success; otherwise raise the matching pynodeta error."""
        if self.status == "success":
            if len(self.ys) != len(t):
                raise ODESolveError(f"solver reported success with {len(self.ys)} of {len(t)} outputs")
            return state.to_torch(self.ys)
        if self.status == "max_steps":
            n = len(self.ys)
            raise MaxStepsReachedError(config.max_num_steps, self.t_reached, t[:n], state.to_torch(self.ys))
        if self.status == "step_underflow":
            raise StepSizeUnderflowError(self.t_reached, self.dt, stats.nfe)
        if self.status == "non_finite":
            raise NonFiniteStateError(self.t_reached, "the state")
        raise ODESolveError(f"{stats.backend} solver failed at t={self.t_reached:.6g}: {self.message}")
