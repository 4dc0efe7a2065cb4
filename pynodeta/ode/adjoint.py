"""The adjoint method: gradients by solving the augmented system backwards, with any backend.

Follows torchdiffeq 0.2.5's scheme (so backward NFE are comparable): the augmented state is
``[t-adjoint (only when t needs a gradient), y, a = dL/dy, dL/dparams]``, integrated from ``t[i]`` back to
``t[i-1]`` for each output interval, with ``y`` reset to the forward solution and the incoming
``dL/dy(t[i-1])`` added at every output time. The step-size norm is the mixed RMS over those parts,
or with ``adjoint_options={"norm": "seminorm"}`` over all but the parameter part (Kidger et al. 2021),
which typically cuts backward NFE substantially.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch.autograd.function import once_differentiable

from .backends import Backend, SolverConfig
from .callbacks import find_callbacks
from .norms import StateNorm, rms_norm
from .stats import SolveStats

__all__ = ["is_adjoint_backward", "backward_solve", "AdjointSpec", "adjoint_integrate"]

_in_backward: contextvars.ContextVar[bool] = contextvars.ContextVar("pynodeta_in_adjoint_backward", default=False)


def is_adjoint_backward() -> bool:
    """True while the right-hand side is being called by an adjoint backward solve (inside ``backward_solve()``).

    Layers with training-time side effects (TA-BN's running statistics) read it to decide whether to
    update during the backward pass.
    """
    return _in_backward.get()


@contextlib.contextmanager
def backward_solve() -> Iterator[None]:
    """Mark the calls inside the block as part of a backward (adjoint) solve.

    pynodeta's adjoint wraps its backward solves in it; a solver of your own that integrates backwards
    outside autograd can use it so that layers see ``is_adjoint_backward()`` as True.
    """
    token = _in_backward.set(True)
    try:
        yield
    finally:
        _in_backward.reset(token)


@dataclass
class AdjointSpec:
    """Everything the backward pass needs besides tensors."""

    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # on the (flat) state
    backend: Backend
    config: SolverConfig  # forward
    adjoint_config: SolverConfig  # backward; its norm is built per call from adjoint_norm
    adjoint_norm: str | Callable | None  # None (mixed RMS), "seminorm", or a user callable
    state_sizes: tuple[int, ...]  # sizes of the parts of a tuple state, or () for a single tensor
    state_norm: Callable[[torch.Tensor], torch.Tensor] | None  # a custom forward norm, if any
    stats: SolveStats
    split_state: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None  # flat -> a tuple state's parts
    callback_owner: object = None  # func as the caller passed it: its callback_*_adjoint methods run backward


def adjoint_integrate(spec: AdjointSpec, y0: torch.Tensor, t: torch.Tensor, params: Sequence[torch.Tensor]):
    """Solve forward without building a graph; gradients for y0, t and params come from the adjoint."""
    return _AdjointSolve.apply(spec, y0, t, *params)


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: AdjointSpec, y0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor):
        ys = spec.backend.integrate(spec.func, y0, t, spec.config, spec.stats)
        ctx.spec = spec
        ctx.autocast = _autocast_state(y0.device.type)
        ctx.save_for_backward(t, ys, *params)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        # Mixed precision: func must see in the backward solve what it saw forward (Lightning's
        # bf16-mixed leaves autocast before calling backward), or its VJPs come out in other dtypes.
        device_type, dtype, enabled = ctx.autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            return _AdjointSolve._backward(ctx, grad_ys)

    @staticmethod
    def _backward(ctx, grad_ys: torch.Tensor):
        spec: AdjointSpec = ctx.spec
        t, ys, *params = ctx.saved_tensors
        need_t = ctx.needs_input_grad[2]
        layout = _AugmentedLayout(ys[0], params, need_t)
        aug_func = _augmented_dynamics(spec.func, layout, params, need_t)
        config = _with_norm(spec.adjoint_config, _adjoint_norm(spec, layout))
        callbacks = find_callbacks(spec.callback_owner, adjoint=True,
                                   shape_state=lambda x: _augmented_parts(x, layout))
        if callbacks is not None:
            config = replace(config, callbacks=callbacks)

        aug = layout.pack(ys[-1], grad_ys[-1])
        time_vjps = torch.zeros(len(t), dtype=t.dtype, device=t.device) if need_t else None
        for i in range(len(t) - 1, 0, -1):
            if need_t:
                # Moving the output time t[i] moves y(t[i]) along f: dL/dt[i] = <dL/dy(t[i]), f(t[i], y(t[i]))>.
                f_i = spec.func(t[i].to(ys.dtype), ys[i])
                dl_dti = torch.sum(f_i * grad_ys[i])
                time_vjps[i] = dl_dti
                aug[0] -= dl_dti
            segment = SolveStats(method=getattr(config.method, "name", config.method), backend=spec.backend.name)
            with backward_solve():
                aug = spec.backend.integrate(aug_func, aug, t[i - 1 : i + 1].flip(0), config, segment)[1].clone()
            spec.stats.absorb_adjoint(segment)
            layout.y_part(aug).copy_(ys[i - 1].reshape(-1))
            layout.a_part(aug).add_(grad_ys[i - 1].reshape(-1))
        if need_t:
            time_vjps[0] = aug[0]
        grad_y0 = layout.a_part(aug).view_as(ys[0])
        return (None, grad_y0, time_vjps, *layout.param_parts(aug, params))


def _autocast_state(device_type: str) -> tuple[str, torch.dtype, bool]:
    if device_type not in ("cpu", "cuda", "xpu", "mps", "hpu"):  # autocast knows no other device types
        return "cpu", torch.get_autocast_dtype("cpu"), False
    return device_type, torch.get_autocast_dtype(device_type), torch.is_autocast_enabled(device_type)


class _AugmentedLayout:
    """Where each part lives in the flat augmented vector [t-adjoint?, y, a, params...]."""

    def __init__(self, y: torch.Tensor, params: Sequence[torch.Tensor], need_t: bool):
        self.shape, self.n, self.offset = y.shape, y.numel(), int(need_t)
        self.param_sizes = [p.numel() for p in params]
        self.param_shapes = [p.shape for p in params]
        self.dtype, self.device = y.dtype, y.device

    def pack(self, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros(self.offset, dtype=self.dtype, device=self.device), y.reshape(-1), a.reshape(-1),
                 torch.zeros(sum(self.param_sizes), dtype=self.dtype, device=self.device)]
        return torch.cat(parts)

    def y_part(self, aug: torch.Tensor) -> torch.Tensor:
        return aug[self.offset : self.offset + self.n]

    def a_part(self, aug: torch.Tensor) -> torch.Tensor:
        return aug[self.offset + self.n : self.offset + 2 * self.n]

    def param_parts(self, aug: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        start, out = self.offset + 2 * self.n, []
        for p, size in zip(params, self.param_sizes):
            out.append(aug[start : start + size].view_as(p).to(p.dtype))
            start += size
        return out


def _augmented_dynamics(func, layout: _AugmentedLayout, params: Sequence[torch.Tensor], need_t: bool):
    params = tuple(params)

    def dynamics(t: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        y = layout.y_part(aug).view(layout.shape)
        a = layout.a_part(aug)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            t_in = t.detach().requires_grad_(True) if need_t else t
            f = func(t_in, y)
            inputs = (y, *params, *((t_in,) if need_t else ()))
            if f.requires_grad:
                vjps = torch.autograd.grad(f, inputs, -a.view_as(f), allow_unused=True)
            else:  # f depends on neither y, t nor params
                vjps = (None,) * len(inputs)
        vjps = [torch.zeros_like(x) if v is None else v for v, x in zip(vjps, inputs)]
        head = [vjps[-1].reshape(1).to(aug.dtype)] if need_t else []
        tail = (v.reshape(-1).to(aug.dtype) for v in vjps[: 1 + len(params)])
        return torch.cat([*head, f.detach().reshape(-1), *tail])

    return dynamics


def _adjoint_norm(spec: AdjointSpec, layout: _AugmentedLayout):
    """The backward step-size norm; torchdiffeq's default_adjoint_norm / adjoint_seminorm."""
    state_sizes = spec.state_sizes or (layout.n,)
    n_param_parts = len(layout.param_sizes)
    if callable(spec.adjoint_norm):
        user_norm, split_state = spec.adjoint_norm, spec.split_state

        def custom(x: torch.Tensor) -> torch.Tensor:
            # torchdiffeq's layout: (t, y, a, *params), each part shaped as the caller's; a tuple state's
            # y and a are spread into their parts: (t, *y, *a, *params).
            t_part, y, a, *p = _augmented_parts(x, layout)
            if split_state is not None:
                return user_norm((t_part, *split_state(y), *split_state(a), *p))
            return user_norm((t_part, y, a, *p))

        return custom
    include_params = spec.adjoint_norm != "seminorm"
    if spec.state_norm is None:
        sizes = [1] * layout.offset + [*state_sizes, *state_sizes, *layout.param_sizes]
        include = [True] * (len(sizes) - n_param_parts) + [include_params] * n_param_parts
        return StateNorm(sizes, include)
    state_norm = spec.state_norm

    def mixed_with_custom_state_norm(x: torch.Tensor) -> torch.Tensor:
        t_part, y, a, *p = _split_augmented(x, layout)
        norms = [state_norm(y), state_norm(a)] + ([t_part.abs().max()] if layout.offset else [])
        if include_params:
            norms += [rms_norm(part) for part in p]
        return torch.stack([torch.as_tensor(n, dtype=x.dtype, device=x.device) for n in norms]).max()

    return mixed_with_custom_state_norm


def _augmented_parts(x: torch.Tensor, layout: _AugmentedLayout) -> tuple[torch.Tensor, ...]:
    """(t-adjoint of shape (), y, a, *params) shaped as torchdiffeq shows them to norms and callbacks; the
    t part is zero when no time gradient is tracked (torchdiffeq carries it always)."""
    t_part, y, a, *p = _split_augmented(x, layout)
    t_part = t_part.reshape(()) if layout.offset else x.new_zeros(())
    return (t_part, y.view(layout.shape), a.view(layout.shape),
            *(part.view(shape) for part, shape in zip(p, layout.param_shapes)))


def _split_augmented(x: torch.Tensor, layout: _AugmentedLayout) -> tuple[torch.Tensor, ...]:
    sizes = [layout.offset, layout.n, layout.n, *layout.param_sizes]
    return tuple(torch.split(x, sizes))


def _with_norm(config: SolverConfig, norm) -> SolverConfig:
    return replace(config, norm=norm)
