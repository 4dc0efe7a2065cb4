"""Derivative backbones of the TA-BN paper's "unmixed" neural ODEs (Zheng et al., 2024, Sec. 5).

Every layer is [ConcatConv (a t channel concatenated) -> norm -> ReLU] (see ``conv_units``); the
last layer is normalised too but has no activation. ``"unet18"`` is :class:`UNetField`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...nn import ConcatLinear, TimeSequential
from ..common import NormFactory, check_in_shape, make_activation
from .conv_units import conv_unit
from .unet_field import UNetField

__all__ = ["BACKBONES", "ConvChain", "MLPField", "build_backbone", "conv_plan"]

BACKBONES = ("conv4", "conv6", "conv7+L", "unet18", "mlp")


def conv_plan(name: str, width: int, extra_layers: int = 1) -> list[tuple[int, str]]:
    """(out channels, move) of each layer but the last (which maps back to the state's channels).

    conv4: 32↓ 64↓ 32↑ [C↑];  conv6: 32↓ 64↓ 128↓ 64↑ 32↑ [C↑];
    conv7+L: conv6 with (1 + L) 256-channel stride-1 layers after 128↓ — 7 + L convs in all
    (the paper's "8-layer backbone" is L = 1). Channel counts are for width = 32 and scale with it.
    """
    w = width
    if name == "conv4":
        return [(w, "down"), (2 * w, "down"), (w, "up")]
    if name == "conv6":
        return [(w, "down"), (2 * w, "down"), (4 * w, "down"), (2 * w, "up"), (w, "up")]
    if name == "conv7+L":
        if extra_layers < 0:
            raise ValueError(f"extra_layers (Lc) must be >= 0, got {extra_layers}")
        middle = [(8 * w, "same")] * (1 + extra_layers)
        return [(w, "down"), (2 * w, "down"), (4 * w, "down"), *middle, (2 * w, "up"), (w, "up")]
    raise ValueError(f"conv_plan has no plan for {name!r}; choose conv4, conv6 or conv7+L")


class ConvChain(nn.Module):
    """A chain of conv units following a plan; the last unit is ↑ back to the input size, no activation.

    forward(t, x): x (batch, in_channels, H, W) -> (batch, out_channels, H, W).
    """

    time_aware = True

    def __init__(self, in_shape: tuple[int, int, int], plan: list[tuple[int, str]], out_channels: int,
                 norm: NormFactory, activation: str = "relu"):
        super().__init__()
        channels, size = in_shape[0], tuple(in_shape[1:])
        moves = [move for _, move in plan]
        if moves.count("down") != moves.count("up") + 1:
            raise ValueError(f"plan {plan} must have one more ↓ than ↑ (the last layer is ↑ back to the input)")
        sizes = []  # inputs of the down convs, the targets of the matching up convs
        units = []
        for out_ch, move in [*plan, (out_channels, "up")]:
            target = sizes.pop() if move == "up" else size
            last = len(units) == len(plan)
            unit, size = conv_unit(channels, out_ch, target, move, norm, None if last else activation)
            if move == "down":
                sizes.append(target)
            units.append(unit)
            channels = out_ch
        self.layers = TimeSequential(*units)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        return self.layers(t, x)


class MLPField(nn.Module):
    """An MLP right-hand side of ConcatLinear layers: [ConcatLinear -> norm -> act] × (depth - 1), ConcatLinear.

    ``norm_layers`` first layers get the norm (the TA-BN paper's MuJoCo model: 11 hidden layers of 64,
    BN on the first 5); None normalises every layer, the last included (without activation).
    forward(t, x): x (batch, in_features) -> (batch, out_features).
    """

    time_aware = True

    def __init__(self, in_features: int, out_features: int, hidden: int, depth: int, norm: NormFactory,
                 activation: str = "relu", norm_layers: int | None = None):
        super().__init__()
        if depth < 1 or hidden < 1:
            raise ValueError(f"depth and hidden must be >= 1, got depth={depth}, hidden={hidden}")
        if norm_layers is not None and not 0 <= norm_layers <= depth:
            raise ValueError(f"norm_layers must be in [0, depth={depth}] or None (all), got {norm_layers}")
        n_norm = depth if norm_layers is None else norm_layers
        widths = [in_features, *[hidden] * (depth - 1), out_features]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(ConcatLinear(widths[i], widths[i + 1]))
            if i < n_norm:
                layers.append(norm(widths[i + 1], dims=1))
            if i < depth - 1:
                layers.append(make_activation(activation))
        self.layers = TimeSequential(*layers)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        return self.layers(t, x)


def build_backbone(
    name: str,                       # one of BACKBONES
    in_shape: tuple[int, ...],       # state shape without batch: (C, H, W), or (features,) for "mlp"
    *,
    out_channels: int | None = None,  # default: in_shape[0] (a right-hand side maps the state to itself)
    norm: str = "tabn",              # any of pynodeta.nn.NORM_KINDS
    t_span: tuple[float, float] = (0.0, 1.0),  # the ODE's span (sets TA-BN's grid)
    width: int = 32,                 # conv: channels of the first level (paper 32); mlp: hidden units
    extra_layers: int | None = None,  # conv7+L only: Lc, the extra 256-channel (8·width) layers (default 1)
    depth: int | None = None,        # mlp only: number of linear layers (default 4)
    norm_layers: int | None = None,  # mlp: how many first layers are normalised (None: all)
    activation: str = "relu",
    groups: int | str | None = None,  # norm="gn": int dividing every layer's width, or "auto" (default)
    norm_options: Mapping[str, Any] | None = None,  # make_norm options, e.g. {"M": 100} for TA-BN
) -> nn.Module:
    """A time-aware derivative backbone ``f(t, x)`` by name."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    for option, value, owner in (("extra_layers", extra_layers, "conv7+L"), ("depth", depth, "mlp"),
                                 ("norm_layers", norm_layers, "mlp")):
        if value is not None and name != owner:
            raise ValueError(f"{option} only applies to backbone={owner!r}, got it with backbone={name!r}")
    spec = NormFactory(norm, t_span=t_span, groups=groups, options=norm_options)
    if name == "mlp":
        (features,) = check_in_shape(in_shape, dims=(1,))
        return MLPField(features, out_channels or features, width, 4 if depth is None else depth, spec,
                        activation, norm_layers)
    shape = check_in_shape(in_shape, dims=(3,))
    if name == "unet18":
        return UNetField(shape, out_channels or shape[0], spec, width, activation)
    plan = conv_plan(name, width, 1 if extra_layers is None else extra_layers)
    return ConvChain(shape, plan, out_channels or shape[0], spec, activation)
