"""``solve``: the one entry point of the ODE core. ``odeint``/``odeint_adjoint`` are thin doors onto it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .adjoint import AdjointSpec, adjoint_integrate
from .backends import Backend, SolverConfig, get_backend
from .errors import MaxStepsReachedError
from .norms import StateNorm
from .stats import SolveStats, _publish
from .validation import FlatState, check_options, check_times, check_tolerance, flatten_state

__all__ = ["Solution", "solve"]

State = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass
class Solution:
    """The result of ``solve``.

    Attributes:
        t: the output times (the ``t`` that was passed in).
        ys: the state at every output time, ``(len(t), *y0.shape)`` (a tuple of such for a tuple ``y0``).
        stats: the solve's statistics; the adjoint fields fill in when backward runs.
    """

    t: torch.Tensor
    ys: State
    stats: SolveStats


def solve(
    func: Callable[[torch.Tensor, State], State],
    y0: State,
    t: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float | torch.Tensor | Sequence[float] = 1e-7,
    atol: float | torch.Tensor | Sequence[float] = 1e-9,
    backend: str | Backend = "torch",
    controller: str = "i",
    options: Mapping[str, Any] | None = None,
    backend_options: Mapping[str, Any] | None = None,
    adjoint: bool = False,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, reporting the state at every time in ``t``.

    Args:
        func: the right-hand side ``func(t, y) -> dy/dt``; ``t`` arrives as a 0-d tensor of y's dtype.
        y0: initial state, a floating-point tensor of any shape or a tuple of such tensors.
        t: 1-D tensor of output times, strictly increasing or strictly decreasing (backwards in time).
        method: see ``pynodeta.ode.METHODS`` for the torch backend ("dopri5", "tsit5", "bosh3",
            "adaptive_heun", "euler", "midpoint", "rk4", "rk4_classic"); other backends list theirs.
        rtol, atol: tolerances of adaptive methods (> 0); per-part sequences for tuple states.
        backend: "torch" (native, differentiable), "scipy", "julia", or a Backend instance.
        controller: "i" (torchdiffeq's integral controller, the default) or "pi".
        options: torchdiffeq's option names: step_size, first_step, max_num_steps, min_step, max_step,
            dtype, norm; plus safety, ifactor, dfactor and interpolation ("linear"/"cubic", fixed grid).
            ``dtype`` is accepted for compatibility: step control always runs in float64 on the host.
        backend_options: options only one backend understands (e.g. ``{"jacobian": "finite-difference"}``
            for scipy's implicit methods); the backend rejects keys it does not know.
        adjoint: compute gradients by the adjoint method (O(1) memory in the number of steps)
            instead of backpropagating through the solver.
        adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options: settings of the backward solve;
            default to the forward ones. ``adjoint_options={"norm": "seminorm"}`` leaves the parameter
            gradients out of the backward error control.
        adjoint_params: tensors to differentiate in the adjoint; default ``func.parameters()``
            (func must then be an ``nn.Module``).

    Gradients with respect to ``t`` are those of the exact flow, ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>`` and
    ``dL/dt_0 = -<dL/dy_0, f(t_0, y_0)>`` through the solve, in both gradient modes.
    """
    be = get_backend(backend)
    t = check_times(t)
    y0_flat, state = flatten_state(y0)
    if method not in be.methods():
        raise ValueError(f"unknown method {method!r} for backend {be.name!r}; choose one of {list(be.methods())}")
    if controller not in ("i", "pi"):
        raise ValueError(f"controller must be 'i' (integral, torchdiffeq's) or 'pi', got {controller!r}")
    options = check_options(options, be, method)
    config = replace(_config(method, rtol, atol, controller, options, state, y0_flat),
                     extra=dict(backend_options or {}))
    flat_func = state.wrap(func)
    stats = SolveStats(method=method, backend=be.name)
    _publish(stats)

    try:
        if adjoint and torch.is_grad_enabled():
            params = _adjoint_params(func, adjoint_params)
            spec = _adjoint_spec(flat_func, be, config, state, stats, options, method, rtol, atol,
                                 adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options, y0_flat)
            ys = adjoint_integrate(spec, y0_flat, t, params)
        elif be.differentiable:
            ys = _integrate_direct(be, flat_func, y0_flat, t, config, stats)
        else:
            if torch.is_grad_enabled() and (y0_flat.requires_grad or t.requires_grad):
                raise ValueError(f"backend {be.name!r} cannot be differentiated through; pass adjoint=True")
            with torch.no_grad():
                ys = be.integrate(flat_func, y0_flat, t, config, stats)
    except MaxStepsReachedError as error:
        if state.is_tuple:  # hand the partial solution back in the caller's structure
            error.ys = state.split(error.ys, (len(error.t),))
        raise
    return Solution(t, state.split(ys, (len(t),)) if state.is_tuple else ys, stats)


def _config(method, rtol, atol, controller, options, state: FlatState, like: torch.Tensor) -> SolverConfig:
    norm = options.get("norm")
    if norm is not None and state.is_tuple:
        user_norm = norm

        def norm(flat: torch.Tensor, _split=state.split) -> torch.Tensor:
            return user_norm(_split(flat))

    elif norm is None and state.is_tuple:
        norm = StateNorm(state.sizes)  # mixed RMS: the largest per-tensor RMS, as torchdiffeq
    defaults = SolverConfig(method)
    return SolverConfig(
        method=method,
        rtol=check_tolerance("rtol", rtol, state, like),
        atol=check_tolerance("atol", atol, state, like),
        controller=controller,
        first_step=_float_or_none(options.get("first_step")),
        max_num_steps=int(options.get("max_num_steps", defaults.max_num_steps)),
        min_step=float(options.get("min_step", defaults.min_step)),
        max_step=float(options.get("max_step", defaults.max_step)),
        step_size=_float_or_none(options.get("step_size")),
        norm=norm,
        safety=float(options.get("safety", defaults.safety)),
        ifactor=float(options.get("ifactor", defaults.ifactor)),
        dfactor=float(options.get("dfactor", defaults.dfactor)),
        interpolation=options.get("interpolation", defaults.interpolation),
    )


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _integrate_direct(be, func, y0, t, config, stats) -> torch.Tensor:
    if not (t.requires_grad and torch.is_grad_enabled()):
        return be.integrate(func, y0, t, config, stats)
    # Time gradients by the exact-flow formulas (see solve's docstring): the solver itself steps on
    # detached times, and two thin autograd nodes route dL/dt.
    with torch.no_grad():
        f_start = func(t[0].detach().to(y0.dtype), y0.detach())
    ys = be.integrate(func, _StartTime.apply(t, y0, f_start), t, config, stats)
    with torch.no_grad():
        f_out = torch.stack([func(t[i].detach().to(y0.dtype), ys[i].detach()) for i in range(1, len(t))])
    stats.nfe += len(t)
    stats.t_evaluated.extend(t.detach().tolist())
    ys = torch.cat([y0.unsqueeze(0), ys[1:]])  # y(t0) = y0 does not move with t0
    return _OutputTimes.apply(t, ys, f_out)


class _StartTime(torch.autograd.Function):
    """Identity on y0; backward gives dL/dt0 = -<dL/dy0, f(t0, y0)> (moving t0 shifts the whole flow)."""

    @staticmethod
    def forward(ctx, t, y0, f_start):
        ctx.save_for_backward(f_start)
        ctx.t_shape, ctx.t_dtype = t.shape, t.dtype
        return y0.clone()

    @staticmethod
    def backward(ctx, grad):
        (f_start,) = ctx.saved_tensors
        grad_t = torch.zeros(ctx.t_shape, dtype=ctx.t_dtype, device=grad.device)
        grad_t[0] = -torch.sum(grad * f_start)
        return grad_t, grad, None


class _OutputTimes(torch.autograd.Function):
    """Identity on ys; backward gives dL/dt_i = <dL/dy_i, f(t_i, y_i)> for i >= 1."""

    @staticmethod
    def forward(ctx, t, ys, f_out):
        ctx.save_for_backward(f_out)
        ctx.t_dtype = t.dtype
        return ys.clone()

    @staticmethod
    def backward(ctx, grad):
        (f_out,) = ctx.saved_tensors
        per_time = (grad[1:] * f_out).reshape(len(f_out), -1).sum(1)
        grad_t = torch.cat([per_time.new_zeros(1), per_time]).to(ctx.t_dtype)
        return grad_t, grad, None


def _adjoint_params(func, adjoint_params) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError(
                "adjoint=True needs the parameters to differentiate: make func an nn.Module, or pass "
                "adjoint_params=(...) explicitly (adjoint_params=() if it has none)"
            )
        adjoint_params = func.parameters()
    return tuple(p for p in adjoint_params if p.requires_grad)


def _adjoint_spec(flat_func, be, config, state, stats, options, method, rtol, atol,
                  adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options, like) -> AdjointSpec:
    adjoint_method = adjoint_method or method
    if adjoint_method != method and options and adjoint_options is None:
        raise ValueError("adjoint_method differs from method, so adjoint_options cannot be inferred from "
                         "options: pass adjoint_options too")
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in options.items() if k != "norm"}
    adjoint_options = dict(adjoint_options)
    adjoint_norm = adjoint_options.pop("norm", None)
    if not (adjoint_norm is None or adjoint_norm == "seminorm" or callable(adjoint_norm)):
        raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or a callable, got {adjoint_norm!r}")
    if adjoint_method not in be.methods():
        raise ValueError(f"unknown adjoint_method {adjoint_method!r} for backend {be.name!r}; "
                         f"choose one of {list(be.methods())}")
    adjoint_options = check_options(adjoint_options, be, adjoint_method)
    # tolerances of the backward solve apply to the augmented state, which is not tuple-shaped
    plain = FlatState(None)
    adjoint_config = _config(adjoint_method,
                             _scalar_tol("adjoint_rtol", rtol if adjoint_rtol is None else adjoint_rtol),
                             _scalar_tol("adjoint_atol", atol if adjoint_atol is None else adjoint_atol),
                             config.controller, adjoint_options, plain, like)
    adjoint_config = replace(adjoint_config, extra=config.extra)
    state_norm = options.get("norm")
    return AdjointSpec(
        func=flat_func, backend=be, config=config, adjoint_config=adjoint_config, adjoint_norm=adjoint_norm,
        state_sizes=state.sizes, state_norm=config.norm if state_norm is not None else None, stats=stats,
    )


def _scalar_tol(name: str, tol):
    if isinstance(tol, torch.Tensor) and tol.numel() > 1 or isinstance(tol, (tuple, list)):
        raise ValueError(f"{name} must be a single number for the adjoint solve (pass {name}=... explicitly)")
    return tol
