"""``solve(..., batched=True)``: the leading dimension of ``y0`` is a batch of independent problems.

Checks what the per-sample mode supports (each refusal says what to do instead), lowers the typed parts to
``LoopSettings`` and runs the loop directly (backprop through the steps) or under the batched adjoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from ..adams import ADAMS_METHODS
from ..backends import Backend
from ..callbacks import find_callbacks
from ..methods import METHODS, Method
from ..settings import Adjoint, FixedGrid, IController, PIController
from ..validation import warn_if_unresolvable
from .adjoint import BatchedAdjointSpec, adjoint_settings, batched_adjoint
from .control import Norm, rms_per_sample
from .loop import RHS, LoopSettings, integrate_batched
from .stats import BatchedSolveStats
from .time_gradients import solve_with_time_gradients
from .times import check_sample_times, solver_times

__all__ = ["solve_batched", "check_batched_parts"]

_UNLIMITED_STEPS = 2**31 - 1


def _torchdiffeq_rms(x: torch.Tensor) -> torch.Tensor:
    # the initial-step rule's reduction in the shared-step mode (torchdiffeq's), per sample
    return x.abs().pow(2).mean(dim=1).sqrt()


def check_batched_parts(method, controller, adjoint, backend: Backend) -> Method:
    """Refuse what the per-sample mode cannot do, before anything runs; returns the Method."""
    if backend.name != "torch":
        raise ValueError(f"batched=True runs on backend 'torch' only (per-sample step sizes are native), got "
                         f"backend {backend.name!r}; use backend='torch' or batched=False")
    resolved = [_adaptive_method(method, "method")]
    if isinstance(adjoint, Adjoint):
        if adjoint.method is not None:
            resolved.append(_adaptive_method(adjoint.method, "Adjoint.method"))
        if callable(adjoint.norm):
            raise ValueError("batched=True: Adjoint(norm=<callable>) is not supported; the backward error norm is "
                             "each sample's mixed RMS over its (y, dL/dy) parts (parameters are shared by the "
                             "batch and stay out of error control, as with norm='seminorm')")
    for part, name in ((controller, "controller"),
                       (adjoint.controller if isinstance(adjoint, Adjoint) else None, "Adjoint.controller")):
        if part is None:
            continue
        if isinstance(part, FixedGrid):
            raise ValueError(f"batched=True needs an adaptive controller, got {name}=FixedGrid(...)")
        _check_controller(part, name)
    return resolved[0]


def _adaptive_method(method, argument: str) -> Method:
    if isinstance(method, str) and method in ADAMS_METHODS:
        raise ValueError(f"batched=True supports explicit Runge-Kutta methods, not the multistep {method!r}; "
                         "use e.g. 'dopri5', or batched=False")
    resolved = METHODS.get(method) if isinstance(method, str) else method
    if not isinstance(resolved, Method):
        raise ValueError(f"unknown {argument} {method!r}; choose one of {list(METHODS)} or pass a Method")
    if not resolved.adaptive:
        raise ValueError(
            f"batched=True needs an adaptive method with an embedded error estimate (per-sample step sizes come "
            f"from per-sample errors); {resolved.name!r} is fixed-grid, so every sample would take the same "
            f"steps: use batched=False with it, or an adaptive method such as 'dopri5', 'tsit5' or 'bosh3'")
    return resolved


def _check_controller(controller: IController, name: str) -> None:
    for field in ("rtol", "atol"):
        value = getattr(controller, field)
        if isinstance(value, (tuple, list, torch.Tensor)):
            raise ValueError(f"batched=True takes a single number for {name}.{field}, got {value!r}")
    if controller.step_t or controller.jump_t:
        raise ValueError(f"batched=True does not support {name}.step_t / jump_t (they are shared times; "
                         "per-sample stops are not implemented); use batched=False")


def _settings(controller: IController, method: Method, max_steps: int | None, warn_after_steps: int | None,
              user_norm: Norm | None, compile_step: bool = False) -> LoopSettings:
    return LoopSettings(compile_step=compile_step,
        rtol=float(controller.rtol), atol=float(controller.atol),
        error_norm=user_norm or rms_per_sample, initial_norm=user_norm or _torchdiffeq_rms,
        first_step=controller.first_step, min_step=controller.min_step, max_step=controller.max_step,
        safety=controller.safety, ifactor=controller.ifactor, dfactor=controller.dfactor,
        gains=tuple(controller.gains) if isinstance(controller, PIController) else None,
        max_steps=_UNLIMITED_STEPS if max_steps is None else max_steps, warn_after_steps=warn_after_steps)


def _user_norm(controller: IController, shape: torch.Size) -> Norm | None:
    """A user norm sees each sample's scaled error as ``(batch, *features)`` and returns ``(batch,)``."""
    if controller.norm is None:
        return None
    norm = controller.norm

    def per_sample(x: torch.Tensor) -> torch.Tensor:
        out = norm(x.view(shape))
        if not isinstance(out, torch.Tensor) or out.shape != (shape[0],):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"with batched=True, controller.norm must map (batch, *features) to one value per "
                             f"sample, shape ({shape[0]},); got {got}")
        return out

    return per_sample


def _flat_rhs(func: Callable, shape: torch.Size) -> RHS:
    def rhs(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = func(t, y.view(shape))
        if not isinstance(out, torch.Tensor) or out.shape != shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"func must return dy/dt shaped like y {tuple(shape)}, got {got}")
        return out.reshape(shape[0], -1)

    def rhs_2d(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (batch, features) already: no reshapes
        out = func(t, y)
        if not isinstance(out, torch.Tensor) or out.shape != shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"func must return dy/dt shaped like y {tuple(shape)}, got {got}")
        return out

    return rhs_2d if len(shape) == 2 else rhs


def solve_batched(func: Callable, y0: torch.Tensor, t: torch.Tensor, parts, backend: Backend,
                  warn_after_steps: int | None, stats: BatchedSolveStats, compile_step: bool = False) -> torch.Tensor:
    """The outputs ``(batch, n, *y0.shape[1:])`` of a per-sample solve; fills ``stats``. ``compile_step``: the
    forward solve's trial steps by one compiled graph (an adjoint's backward solve stays eager)."""
    method = check_batched_parts(parts.method, parts.controller, parts.adjoint or False, backend)
    _check_state(y0, func)
    batch = y0.shape[0]
    t = check_sample_times(t, batch)
    stats.reset_per_sample(batch, y0.device)
    shape = y0.shape
    if batch == 0 or t.shape[1] == 1:
        return y0.unsqueeze(1).expand(batch, t.shape[1], *shape[1:]).clone()
    times = solver_times(t.to(y0.device))
    settings = _settings(parts.controller, method, parts.max_steps, warn_after_steps,
                         _user_norm(parts.controller, shape), compile_step)
    warn_if_unresolvable(settings, y0)  # the same warning as the shared-step mode (one ulp-scale check)
    rhs = _flat_rhs(func, shape)
    y_flat = y0.reshape(batch, -1)
    if parts.adjoint is not None and torch.is_grad_enabled():
        spec = _adjoint_spec(parts, rhs, times, method, settings, warn_after_steps, stats, y_flat.shape[1])
        params = _adjoint_params(func, parts.adjoint.params)

        def run(y_start: torch.Tensor) -> torch.Tensor:
            return batched_adjoint(spec, y_start, params)
    else:
        def run(y_start: torch.Tensor) -> torch.Tensor:
            return integrate_batched(rhs, y_start, times, method, settings, stats)
    if t.requires_grad and torch.is_grad_enabled():
        ys = solve_with_time_gradients(rhs, t.to(y0.device), y_flat, run, stats)
    else:
        ys = run(y_flat)
    return ys.view(batch, t.shape[1], *shape[1:])


def _adjoint_spec(parts, rhs, times, method, settings, warn_after_steps, stats, n) -> BatchedAdjointSpec:
    adjoint: Adjoint = parts.adjoint
    adjoint_method = method if adjoint.method is None else _adaptive_method(adjoint.method, "Adjoint.method")
    controller = adjoint.controller or replace(parts.controller, norm=None)
    max_steps = parts.max_steps if adjoint.max_steps is None else adjoint.max_steps
    backward = adjoint_settings(_settings(controller, adjoint_method, max_steps, warn_after_steps, None), n)
    return BatchedAdjointSpec(rhs, times, method, settings, adjoint_method, backward, stats)


def _check_state(y0, func) -> None:
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"batched=True needs y0 to be one tensor shaped (batch, *features), got "
                        f"{type(y0).__name__}; stack tuple parts along a feature dimension")
    if y0.ndim < 1 or not torch.is_floating_point(y0):
        raise ValueError(f"batched=True needs a real floating-point y0 shaped (batch, *features), got "
                         f"dtype {y0.dtype}, shape {tuple(y0.shape)}")
    if find_callbacks(func) is not None:
        raise ValueError("batched=True does not call func's callback_step/accept/reject (their arguments are "
                         "per-sample); remove them or use batched=False")
    if not math.prod(y0.shape[1:]) >= 1 and y0.shape[0] > 0:
        raise ValueError(f"y0 has no features per sample, shape {tuple(y0.shape)}")


def _adjoint_params(func, params: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    if params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError("adjoint=True needs the parameters to differentiate: make func an nn.Module, or "
                             "pass adjoint_params=(...) explicitly (adjoint_params=() if it has none)")
        params = func.parameters()
    return tuple(p for p in params if p.requires_grad)
