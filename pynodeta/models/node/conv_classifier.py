"""A convolutional neural-ODE classifier: a conv stem, an ODE block on its features, a pooled head.

It is the NODE classifier of Kim et al. (2024), "Disappearance of timestep embedding" (Sec. 4.1),
registered as ``"seed001"`` (the shipped ``seed001_*`` configs):
early stage [3×3 conv, two stride-2 residual blocks] -> ODE block with
f = [norm–act–ConcatConv–norm–act–ConcatConv–norm] -> head [norm–act–GAP–dropout–FC].
Paper setting: C = 256, GN with G = 32, ReLU, dropout 0.5, dopri5 rtol = atol = 1e-3 with the adjoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...nn import (
    ConcatConv2d,
    LinearTimestepEmbedding,
    PositionalTimestepEmbedding,
    TimeSequential,
    apply_bias_init_policy,
)
from ...ode import SolverSettings
from ..common import check_in_shape, make_activation, ode_norm, static_norm
from .conv_units import down_size
from .ode_block import ODEBlock, check_t_span

__all__ = ["ConvODEClassifier", "ConvODEFunc", "ResidualBlock", "TIME_INJECTIONS"]

TIME_INJECTIONS = ("concat", "additive")


class ResidualBlock(nn.Module):
    """Pre-activation residual block: [norm–act–conv(stride)–norm–act–conv] + shortcut (1×1 conv if strided).

    forward(x): (batch, C, H, W) -> (batch, C, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, channels: int, stride: int, norm: str, groups, activation: str):
        super().__init__()
        self.norm1, self.act1 = static_norm(norm, channels, groups=groups), make_activation(activation)
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm2, self.act2 = static_norm(norm, channels, groups=groups), make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(channels, channels, 1, stride=stride, bias=False) if stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.act2(self.norm2(self.conv1(out))))
        return out + shortcut


class ConvODEFunc(TimeSequential):
    """f(t, h) = [norm–act–T(conv)–norm–act–T(conv)–norm], T(conv) the time injection around a 3×3 conv:

    "concat": ConcatConv2d (a t channel; equivalent to conv + t·v per channel, which a per-channel
    norm cancels); "additive": conv followed by an explicit t·v per channel; ``positional``: add the
    positional embedding t·p (H×W, shared by channels) after each conv, which survives BN.
    forward(t, h): (batch, C, H, W) -> same shape.
    """

    def __init__(self, channels: int, size: tuple[int, int], norm: str, groups, activation: str,
                 time_injection: str, positional: bool, positional_mode: str, t_span, norm_options):
        if time_injection not in TIME_INJECTIONS:
            raise ValueError(f"time_injection must be one of {TIME_INJECTIONS}, got {time_injection!r}")

        def norm_layer():
            return ode_norm(norm, channels, t_span=t_span, groups=groups, norm_options=norm_options)

        def timed_conv():
            if time_injection == "concat":
                layers = [ConcatConv2d(channels, channels, 3, padding=1)]
            else:
                layers = [nn.Conv2d(channels, channels, 3, padding=1), LinearTimestepEmbedding(channels)]
            if positional:
                layers.append(PositionalTimestepEmbedding(*size, mode=positional_mode))
            return layers

        super().__init__(norm_layer(), make_activation(activation), *timed_conv(),
                         norm_layer(), make_activation(activation), *timed_conv(), norm_layer())


class ConvODEClassifier(nn.Module):
    """forward(x): x (batch, *in_shape) -> logits (batch, num_classes).

    Norms outside the ODE (stem, head) are the plain counterparts of ``norm`` (BatchNorm2d for the
    batch-norm kinds); inside the ODE they are time-aware (``pynodeta.nn.make_norm``).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],          # (channels, height, width), e.g. (3, 32, 32) or (1, 8, 8)
        num_classes: int,
        channels: int = 256,                     # C, the ODE state's channels (paper 256)
        norm: str = "gn",                        # any of pynodeta.nn.NORM_KINDS (paper: "gn")
        groups: int | str | None = None,         # norm="gn": G dividing C, or "auto" = min(C/4, 32) (default)
        activation: str = "relu",                # relu, silu, elu, softplus, sigmoid (tanh)
        time_injection: str = "concat",          # "concat" (ConcatConv) or "additive" (conv + t·v)
        positional: bool = False,                # add PositionalTimestepEmbedding after each ODE conv
        positional_mode: str = "linear",         # "linear" (t·p) or "mlp" (sinusoid -> MLP)
        bias_init_policy: bool = False,          # zero the ODE function's operand biases (Kim et al.'s fix 2)
        stem_strides: tuple[int, int] = (2, 2),  # strides of the two residual blocks (paper 2, 2)
        dropout: float = 0.5,
        norm_options: Mapping[str, Any] | None = None,  # make_norm options inside the ODE (TA-BN: M, ...)
        t_span: tuple[float, float] = (0.0, 1.0),
        solver: SolverSettings | None = None,       # default dopri5, rtol = atol = 1e-3, adjoint
    ):
        super().__init__()
        in_channels, height, width = check_in_shape(in_shape, dims=(3,))
        if channels < 1 or num_classes < 1:
            raise ValueError(f"channels and num_classes must be >= 1, got {channels}, {num_classes}")
        if len(stem_strides) != 2 or any(s not in (1, 2) for s in stem_strides):
            raise ValueError(f"stem_strides must be two strides, each 1 or 2, got {stem_strides!r}")
        if groups is not None and norm != "gn":
            raise ValueError(f"groups only applies to norm='gn', got groups={groups!r} with norm={norm!r}")
        groups = "auto" if norm == "gn" and groups is None else groups
        if isinstance(groups, int) and channels % groups:
            raise ValueError(f"groups must divide channels={channels}, got {groups}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        t_span = check_t_span(t_span)
        self.in_shape = (in_channels, height, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1),
                                  *(ResidualBlock(channels, s, norm, groups, activation) for s in stem_strides))
        size = (height, width)
        for s in stem_strides:
            size = tuple(down_size(v) for v in size) if s == 2 else size
        func = ConvODEFunc(channels, size, norm, groups, activation, time_injection, positional,
                              positional_mode, t_span, norm_options)
        if bias_init_policy:
            apply_bias_init_policy(func)
        self.ode = ODEBlock(func, t_span, solver)
        self.head = nn.Sequential(static_norm(norm, channels, groups=groups), make_activation(activation),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"x must be (batch, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        return self.head(self.ode(self.stem(x)))
