"""``solve``: the one entry point of the ODE core. ``odeint``/``odeint_adjoint`` are thin doors onto it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from .adjoint import AdjointSpec, adjoint_integrate
from .backends import Backend, SolverConfig, get_backend
from .backends.compiled_step import compile_option
from .batched.solve import BatchedSolveStats, check_batched_parts, solve_batched
from .callbacks import find_callbacks, warn_unsupported_callbacks
from .errors import MaxStepsReachedError, refuse_second_derivatives_through_times
from .methods import Method
from .parts import adjoint_config, method_name, refuse_torchdiffeq_spellings, solver_config, typed_parts
from .settings import Adjoint, Controller, FixedGrid, IController
from .stats import SolveStats, _publish
from .validation import StateStructure, check_times, flatten_state, warn_if_unresolvable

__all__ = ["Solution", "solve"]

State = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass
class Solution:
    """The result of ``solve``.

    Attributes:
        t: the output times (the ``t`` that was passed in).
        ys: the state at every output time, ``(len(t), *y0.shape)`` (a tuple of such for a tuple ``y0``);
            with ``batched=True``, ``(batch, n, *y0.shape[1:])``: sample first, then its output times.
        stats: the solve's statistics; the adjoint fields fill in when backward runs (a
            ``BatchedSolveStats`` with per-sample counts when ``batched=True``).
    """

    t: torch.Tensor
    ys: State
    stats: SolveStats


def solve(
    func: Callable[[torch.Tensor, State], State],
    y0: State,
    t: torch.Tensor,
    *,
    method: str | Method = "dopri5",
    controller: Controller | None = None,
    adjoint: bool | Adjoint = False,
    backend: str | Backend = "torch",
    max_steps: int | None = None,
    warn_after_steps: int | None = 100_000,
    backend_options: Mapping[str, Any] | None = None,
    batched: bool = False,
    **torchdiffeq_spellings: Any,
) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, reporting the state at every time in ``t``.

    Args:
        func: the right-hand side ``func(t, y) -> dy/dt``; ``t`` arrives as a 0-d tensor of y's dtype.
        y0: initial state, a real floating-point tensor of any shape or a tuple of such tensors.
        t: 1-D tensor of output times, strictly increasing or strictly decreasing (backwards in time).
        method: a name (``pynodeta.METHODS`` for the torch backend: "dopri5", "tsit5", "bosh3",
            "adaptive_heun", "euler", "midpoint", "rk4", "rk4_classic"; other backends list theirs) or a
            ``Method``, e.g. ``Method.from_tableau(my_tableau, order=...)``.
        controller: ``IController(rtol, atol, ...)`` / ``PIController(...)`` for adaptive methods,
            ``FixedGrid(step_size, interpolation)`` for fixed-grid ones; None: the method's default
            (torchdiffeq's: I controller, rtol 1e-7, atol 1e-9).
        adjoint: gradients by the adjoint method (O(1) memory in the number of steps) instead of
            backpropagating through the solver: True, or ``Adjoint(method, controller, norm, params)``.
        backend: "torch" (native, differentiable), "scipy", "julia", or a Backend instance.
        max_steps: limit on attempted steps (forward, and backward unless the Adjoint sets its own);
            None: unlimited, as torchdiffeq.
        warn_after_steps: warn once, with t and dt, when a solve takes more steps than this (None: never).
        backend_options: options only one backend understands (e.g. ``{"jacobian": "finite-difference"}``
            for scipy's implicit methods); the backend rejects keys it does not know.
        batched: per-sample step sizes: the leading dimension of ``y0`` is a batch of independent problems,
            each with its own time, steps and statistics (``BatchedSolveStats``); ``func`` receives ``t`` of
            shape ``(batch,)``; ``t`` may be ``(n,)`` or ``(batch, n)``; ``ys`` is ``(batch, n, *features)``.
            Adaptive Runge-Kutta methods on the torch backend; see docs/solver.md.

    torchdiffeq's spellings (``rtol=``, ``atol=``, ``options=``, ``controller="pi"``, ``adjoint_rtol=`` ...)
    belong to ``odeint``/``odeint_adjoint``; ``solve`` refuses them, naming the typed part to pass instead.
    ``SolverSettings.from_arguments(rtol=..., options=...)`` converts them: ``solve(..., **settings)``.

    Gradients with respect to ``t`` are those of the exact flow, ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>`` and
    ``dL/dt_0 = -<dL/dy_0, f(t_0, y_0)>`` through the solve, in both gradient modes.
    """
    refuse_torchdiffeq_spellings(controller, torchdiffeq_spellings)
    be = get_backend(backend)
    if not isinstance(batched, bool):
        raise TypeError(f"batched must be True or False, got {batched!r}")
    if batched:
        return _solve_batched(func, y0, t, be, method, controller, adjoint, max_steps, warn_after_steps,
                              backend_options)
    t = check_times(t)
    y0_flat, state = flatten_state(y0)
    parts = typed_parts(be, method, controller, adjoint, max_steps)
    if warn_after_steps is not None and not (isinstance(warn_after_steps, int) and warn_after_steps >= 1):
        raise ValueError(f"warn_after_steps must be an int >= 1, or None; got {warn_after_steps!r}")
    config = solver_config(parts.method, parts.controller, parts.max_steps, warn_after_steps, backend_options,
                           state, y0_flat)
    if isinstance(parts.controller, IController):
        warn_if_unresolvable(config, y0_flat)
    config = _with_callbacks(config, func, state, be, parts)
    stats = SolveStats(method=method_name(parts.method), backend=be.name)
    _publish(stats)
    if y0_flat.numel() == 0:  # an empty batch: nothing to integrate, the same on every backend
        ys = y0_flat.unsqueeze(0).expand(len(t), *y0_flat.shape).clone()
        return Solution(t, state.split(ys, (len(t),)) if state.is_tuple else ys, stats)
    flat_func = state.wrap(func)

    try:
        if parts.adjoint is not None and torch.is_grad_enabled():
            params = _adjoint_params(func, parts.adjoint.params)
            spec = AdjointSpec(
                func=flat_func, backend=be, config=config, adjoint_config=adjoint_config(parts, config, be, y0_flat),
                adjoint_norm=None if parts.adjoint.norm == "mixed" else parts.adjoint.norm,
                state_sizes=state.sizes, state_norm=config.norm if _user_norm(parts.controller) else None,
                stats=stats, split_state=state.split if state.is_tuple else None, callback_owner=func,
            )
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


def _solve_batched(func, y0, t, be, method, controller, adjoint, max_steps, warn_after_steps,
                   backend_options) -> Solution:
    """The per-sample mode (``pynodeta.ode.batched``): the same typed parts, a loop with per-sample steps."""
    options = dict(backend_options or {})
    compile_step = compile_option(options)
    if options:
        raise ValueError(f"batched=True takes only backend_options={{'compile': True}}, got {sorted(options)} "
                         f"('cuda_graph' replays steps shared by the batch: drop batched=True to use it)")
    check_batched_parts(method, controller, adjoint if isinstance(adjoint, Adjoint) else False, be)
    parts = typed_parts(be, method, controller, adjoint, max_steps)
    if warn_after_steps is not None and not (isinstance(warn_after_steps, int) and warn_after_steps >= 1):
        raise ValueError(f"warn_after_steps must be an int >= 1, or None; got {warn_after_steps!r}")
    stats = BatchedSolveStats(method=method_name(parts.method), backend=be.name)
    _publish(stats)
    ys = solve_batched(func, y0, t, parts, be, warn_after_steps, stats, compile_step)
    return Solution(t, ys, stats)


def _with_callbacks(config: SolverConfig, func, state: StateStructure, be: Backend, parts) -> SolverConfig:
    """func's torchdiffeq step callbacks, called with the caller's state layout; a warning for those the
    method cannot call (as torchdiffeq warns)."""
    warn_unsupported_callbacks(func, method_name(parts.method), not isinstance(parts.controller, FixedGrid),
                               native=be.differentiable)
    callbacks = find_callbacks(func, shape_state=state.split if state.is_tuple else None)
    return config if callbacks is None else replace(config, callbacks=callbacks)


def _user_norm(controller: Controller) -> bool:
    return isinstance(controller, IController) and controller.norm is not None


def _integrate_direct(be, func, y0, t, config, stats) -> torch.Tensor:
    if not (t.requires_grad and torch.is_grad_enabled()):
        return be.integrate(func, y0, t, config, stats)
    # Time gradients by the exact-flow formulas (see solve's docstring): the solver itself steps on
    # detached times, and two thin autograd nodes route dL/dt.
    with torch.no_grad():
        f_start = func(t[0].detach().to(y0.dtype), y0.detach()).to(y0.dtype)  # dy/dt in y's dtype, as the solve
    ys = be.integrate(func, _StartTime.apply(t, y0, f_start), t, config, stats)
    with torch.no_grad():
        f_out = [func(t[i].detach().to(y0.dtype), ys[i].detach()) for i in range(1, len(t))]
        f_out = torch.stack(f_out).to(y0.dtype) if f_out else y0.new_zeros((0, *y0.shape))  # one output time: none
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
        refuse_second_derivatives_through_times()
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
        refuse_second_derivatives_through_times()
        (f_out,) = ctx.saved_tensors
        products = grad[1:] * f_out
        per_time = products.reshape(len(f_out), -1).sum(1) if len(f_out) else products.new_zeros(0)
        grad_t = torch.cat([per_time.new_zeros(1), per_time]).to(ctx.t_dtype)
        return grad_t, grad, None


def _adjoint_params(func, adjoint_params) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError(
                "adjoint=True needs the parameters to differentiate: make func an nn.Module, or pass "
                "the parameters explicitly: adjoint=Adjoint(params=(...)) to solve, adjoint_params=(...) to "
                "odeint_adjoint (an empty tuple if it has none)"
            )
        adjoint_params = func.parameters()
    return tuple(p for p in adjoint_params if p.requires_grad)
