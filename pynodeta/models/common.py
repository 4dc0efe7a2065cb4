"""Shared pieces of the model zoo: activations by name, and norms inside and outside the ODE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..nn import NORM_KINDS, group_count, make_norm

__all__ = ["ACTIVATIONS", "make_activation", "ode_norm", "static_norm", "NormFactory", "check_in_shape"]

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (see ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid activations: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def check_norm_kind(kind: str) -> str:
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; valid kinds: {', '.join(NORM_KINDS)}")
    return kind


def check_in_shape(in_shape, dims: tuple[int, ...] = (1, 3)) -> tuple[int, ...]:
    """``in_shape`` (one sample's shape, no batch axis) as a tuple of positive ints of an allowed length."""
    try:
        shape = tuple(int(s) for s in in_shape)
    except (TypeError, ValueError):
        raise ValueError(f"in_shape must be a sequence of ints, got {in_shape!r}") from None
    if len(shape) not in dims or min(shape) < 1:
        expected = " or ".join({1: "(features,)", 3: "(channels, height, width)"}[d] for d in dims)
        raise ValueError(f"in_shape must be {expected} with positive sizes, got {in_shape!r}")
    return shape


def tabn_span_options(t_span: tuple[float, float], norm_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """TA-BN's grid options for an ODE solved over ``t_span``: by default the grid runs from
    min(0, span start) to the span's end (the paper's [0, T] for spans in [0, T]); t outside clamped.

    Adaptive solvers evaluate stage times slightly beyond the span's end inside their last step
    (dense output), hence ``outside="clamp"``; a grid that does not cover the span is an error.
    """
    options = {"outside": "clamp", **(norm_options or {})}
    if "T" in options:
        grid = (0.0, options["T"])
    else:
        grid = (options.setdefault("t_min", min(0.0, *t_span)), options.setdefault("t_max", max(t_span)))
    if min(t_span) < grid[0] or max(t_span) > grid[1]:
        raise ValueError(f"TA-BN's grid [{grid[0]}, {grid[1]}] must cover t_span={t_span}; pass "
                         "norm_options={'t_min': ..., 't_max': ...} covering it (or drop them for the default)")
    return options


def ode_norm(
    kind: str,
    num_channels: int,
    *,
    t_span: tuple[float, float],               # the span of the ODE the layer lives in (sets TA-BN's T)
    dims: int = 2,                             # 2: (batch, C, H, W); 1: (batch, C)
    groups: int | str | None = None,           # kind="gn": an int dividing C or "auto" (pynodeta.nn.group_count)
    norm_options: Mapping[str, Any] | None = None,  # make_norm's kind-specific options (M, momentum, ...)
) -> nn.Module:
    """A time-aware norm for use *inside* an ODE function (``forward(t, x)``)."""
    check_norm_kind(kind)
    if kind == "gn":
        return make_norm(kind, num_channels, dims=dims, groups=groups or "auto")
    if groups is not None:
        raise ValueError(f"groups only applies to norm='gn', got groups={groups!r} with norm={kind!r}")
    options = dict(norm_options or {})
    if kind == "tabn":
        options = tabn_span_options(t_span, options)
    return make_norm(kind, num_channels, dims=dims, **options)


def static_norm(kind: str, num_channels: int, *, groups: int | str | None = None) -> nn.Module:
    """The plain counterpart of ``kind`` for layers *outside* an ODE (stem, head): forward(x).

    Outside the ODE there is no time, so "tabn" and "popti-bn" are ordinary BatchNorm2d;
    "minibatch-bn" keeps batch statistics at test time as inside the ODE.
    """
    check_norm_kind(kind)
    if kind in ("tabn", "popti-bn"):
        return nn.BatchNorm2d(num_channels)
    if kind == "minibatch-bn":
        return nn.BatchNorm2d(num_channels, track_running_stats=False)
    if kind == "gn":
        return nn.GroupNorm(group_count(num_channels, groups or "auto"), num_channels)
    if groups is not None:
        raise ValueError(f"groups only applies to norm='gn', got groups={groups!r} with norm={kind!r}")
    if kind == "ln":
        return nn.GroupNorm(1, num_channels)
    if kind == "in":
        return nn.InstanceNorm2d(num_channels, affine=True)
    return nn.Identity()


class NormFactory:
    """:func:`ode_norm` with everything but the layer's width fixed: what every layer of a derivative
    backbone needs to build its norm (kind, the ODE's span, GroupNorm groups, kind options).

    ``factory(num_channels, dims=2)`` -> a time-aware norm, ``forward(t, x)``.
    """

    def __init__(self, kind: str, *, t_span: tuple[float, float] = (0.0, 1.0), groups: int | str | None = None,
                 options: Mapping[str, Any] | None = None):
        self.kind, self.t_span, self.groups, self.options = check_norm_kind(kind), tuple(t_span), groups, options

    def __call__(self, num_channels: int, dims: int = 2) -> nn.Module:
        return ode_norm(self.kind, num_channels, t_span=self.t_span, dims=dims, groups=self.groups,
                        norm_options=self.options)
