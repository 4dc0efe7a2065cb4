"""The ODE block: integrate a time-aware module over a span and keep the statistics of the solve."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...ode import SolveStats, get_backend, solve
from ...ode.validation import check_options

__all__ = ["ODESettings", "ODEBlock", "ode_blocks", "total_nfe"]

State = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ODESettings:
    """How the models' ODE blocks solve: one typed bundle so configs can set it in one place.

    The defaults are the papers' (dopri5, rtol = atol = 1e-3, adjoint gradients).
    """

    method: str = "dopri5"                      # see pynodeta.ode.METHODS
    rtol: float = 1e-3                          # tolerances of adaptive methods (> 0)
    atol: float = 1e-3
    adjoint: bool = True                        # gradients by the adjoint (O(1) memory) or by backprop
    options: dict[str, Any] | None = None       # solve's options, e.g. {"step_size": 0.1} for "rk4"
    adjoint_options: dict[str, Any] | None = None  # e.g. {"norm": "seminorm"}
    backend: str = "torch"                      # "torch", "scipy", "julia"
    controller: str = "i"                       # "i" (torchdiffeq's step control) or "pi"

    def block(self, func: nn.Module, t_span: tuple[float, float] = (0.0, 1.0)) -> ODEBlock:
        """An ODEBlock integrating ``func`` over ``t_span`` with these settings."""
        return ODEBlock(func, t_span=t_span, method=self.method, rtol=self.rtol, atol=self.atol,
                        adjoint=self.adjoint, adjoint_options=self.adjoint_options, options=self.options,
                        backend=self.backend, controller=self.controller)


def check_t_span(t_span) -> tuple[float, float]:
    """``t_span`` as two finite, distinct floats; ValueError otherwise."""
    try:
        t0, t1 = (float(v) for v in t_span)
    except (TypeError, ValueError):
        raise ValueError(f"t_span must be a pair of numbers (t0, t1), got {t_span!r}") from None
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
        raise ValueError(f"t_span must be two finite, distinct times, got {t_span!r}")
    return t0, t1


class ODEBlock(nn.Module):
    """``x -> y(t1)`` where ``dy/dt = func(t, y)``, ``y(t0) = x``, solved by ``pynodeta.solve``.

    forward(x): x a tensor ``(batch, ...)`` or a tuple of such (a tuple state, e.g. position and
    velocity) -> the state at ``t_span[1]``, same structure. ``forward(x, t)`` with a 1-D tensor of
    times (``t[0]`` the start) returns the whole trajectory instead, ``(len(t), batch, ...)``.

    ``last_stats`` is the SolveStats of the last forward solve; its adjoint fields fill in when
    backward runs (adjoint mode). Note that an adaptive solver's error norm is taken over the whole
    batch, so its steps (and a sample's output, to within the tolerance) depend on the batch.
    """

    def __init__(
        self,
        func: nn.Module,                              # time-aware right-hand side, forward(t, y)
        t_span: tuple[float, float] = (0.0, 1.0),     # integrate from t_span[0] to t_span[1]
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        adjoint: bool = True,                         # adjoint gradients (backward solve) or backprop
        adjoint_options: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,     # solve's options (step_size, max_num_steps, ...)
        backend: str = "torch",
        **solve_kwargs: Any,                          # further pynodeta.solve arguments (controller, ...)
    ):
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError(f"func must be an nn.Module with forward(t, y), got {type(func).__name__}")
        self.t_span = check_t_span(t_span)
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if not (isinstance(tol, (int, float)) and tol > 0):
                raise ValueError(f"{name} must be a number > 0, got {tol!r}")
        be = get_backend(backend)
        if method not in be.methods():
            raise ValueError(f"unknown method {method!r} for backend {be.name!r}; choose one of {list(be.methods())}")
        check_options(options, be, method)
        if adjoint_options is not None and not adjoint:
            raise ValueError("adjoint_options only apply with adjoint=True; drop them or set adjoint=True")
        for reserved in ("t", "y0", "method", "rtol", "atol", "adjoint", "options", "backend"):
            if reserved in solve_kwargs:
                raise ValueError(f"pass {reserved!r} as ODEBlock's own argument, not through solve_kwargs")
        self.func = func
        self.method, self.rtol, self.atol, self.adjoint, self.backend = method, rtol, atol, adjoint, backend
        self.options = dict(options) if options else None
        self.adjoint_options = dict(adjoint_options) if adjoint_options else None
        self.solve_kwargs = solve_kwargs
        self.last_stats: SolveStats | None = None

    def forward(self, x: State, t: torch.Tensor | None = None) -> State:
        like = x[0] if isinstance(x, tuple) else x
        times = torch.tensor(self.t_span, dtype=like.dtype, device=like.device) if t is None else t
        extra = dict(self.solve_kwargs)
        if self.adjoint and self.adjoint_options is not None:
            extra["adjoint_options"] = self.adjoint_options
        sol = solve(self.func, x, times, method=self.method, rtol=self.rtol, atol=self.atol,
                    options=self.options, adjoint=self.adjoint, backend=self.backend, **extra)
        self.last_stats = sol.stats
        if t is not None:
            return sol.ys
        return tuple(y[-1] for y in sol.ys) if isinstance(sol.ys, tuple) else sol.ys[-1]

    @property
    def nfe_forward(self) -> int:
        """Right-hand-side evaluations of the last forward solve (0 before the first)."""
        return 0 if self.last_stats is None else self.last_stats.nfe

    @property
    def nfe_backward(self) -> int:
        """Evaluations of the last adjoint backward solve; 0 until backward runs, and always 0 when
        gradients come by backprop through the solver (there is no backward solve then)."""
        return 0 if self.last_stats is None else self.last_stats.nfe_adjoint

    def extra_repr(self) -> str:
        return (f"t_span={self.t_span}, method={self.method!r}, rtol={self.rtol}, atol={self.atol}, "
                f"adjoint={self.adjoint}, backend={self.backend!r}")


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    """Every ODEBlock inside ``model`` (itself included), in module order."""
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


def total_nfe(model: nn.Module) -> tuple[int, int]:
    """(forward, backward) NFE of the last solve of every ODEBlock in ``model``, summed."""
    blocks = ode_blocks(model)
    return sum(b.nfe_forward for b in blocks), sum(b.nfe_backward for b in blocks)
