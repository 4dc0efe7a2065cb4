"""The time-aware calling convention: ``forward(t, x)``, and a container that follows it.

Every time-aware module takes time first, like an ODE right-hand side ``f(t, y)``: layers, norms,
derivative backbones and whole networks alike, so any of them can be the ``func`` of an ODE block
or the network of a diffusion model. Inside a larger network the boundary stays ``forward(t, x)``,
but a U-Net may compute one timestep embedding from ``t`` (e.g. ``TimestepEmbedding``) and pass
that shared embedding to its blocks, which then take ``(x, emb)`` internally; such blocks are not
time-aware in this sense and are not meant to be called with a raw ``t``.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

__all__ = ["is_time_aware", "call_with_time", "TimeSequential", "time_as_tensor"]


@functools.cache
def _forward_takes_time(cls: type) -> bool:
    # A forward whose first argument is named ``t`` and which takes a second one is time-aware.
    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[0].name == "t"


def is_time_aware(module: nn.Module) -> bool:
    """True if ``module.forward`` takes ``(t, x)``.

    A class may say so explicitly with a class attribute ``time_aware = True`` (or ``False``);
    otherwise a forward whose first parameter is named ``t`` followed by another positional
    parameter counts as time-aware.
    """
    flag = getattr(module, "time_aware", None)
    if flag is not None:
        return bool(flag)
    return _forward_takes_time(type(module))


def call_with_time(module: nn.Module, t, x: torch.Tensor) -> torch.Tensor:
    """Call ``module(t, x)`` if it is time-aware, else ``module(x)``."""
    return module(t, x) if is_time_aware(module) else module(x)


def time_as_tensor(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` (float, 0-d or (batch,) tensor) as a tensor with the dtype and device of ``x``.

    Returns a 0-d tensor for a scalar time, a (batch,) tensor for per-sample times.
    Raises ValueError for any other shape.
    """
    if isinstance(t, (str, bytes, bool)):  # torch reads True as 1.0; a text time is a caller's slip
        raise TypeError(f"t must be a number or a tensor of times, got {type(t).__name__} {t!r}")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 1 and t.shape[0] == 1:
        t = t.reshape(())
    if t.dim() == 0:
        return t
    if t.dim() == 1 and t.shape[0] == x.shape[0]:
        return t
    raise ValueError(
        f"t must be a float, a 0-d tensor or a (batch,) tensor with batch={x.shape[0]}, "
        f"got shape {tuple(t.shape)}"
    )


class TimeSequential(nn.Sequential):
    """``nn.Sequential`` that passes ``t`` to the children that take it.

    forward(t, x): x is whatever the first child accepts; time-aware children (see
    ``is_time_aware``) are called as ``child(t, x)``, the others as ``child(x)``.
    """

    time_aware = True

    def forward(self, t, x):  # type: ignore[override]
        for module in self:
            x = call_with_time(module, t, x)
        return x
