"""The TA-BN paper's 18-conv U-Net derivative backbone (channels 32,32 | 64,64 | 128,128 | 256,256):
a time-aware vector field ``f(t, x)`` for an ODE block, backbone name ``"unet18"``."""

from __future__ import annotations

import torch
from torch import nn

from ...nn import TimeSequential
from ..common import NormFactory
from .conv_units import conv_unit

__all__ = ["UNetField"]


class UNetField(nn.Module):
    """Down: four levels of two conv units (the first unit of levels 2-4 is ↓); up: per level one ↑ unit,
    concatenation with the skip, two conv units; then one unit to ``out_channels`` without activation.
    8 + 9 + 1 = 18 convolutions, each [ConcatConv -> norm (-> ReLU)].

    forward(t, x): x (batch, C, H, W) -> (batch, out_channels, H, W); any H, W >= 1.
    """

    time_aware = True

    def __init__(self, in_shape: tuple[int, int, int], out_channels: int, norm: NormFactory, width: int = 32,
                 activation: str = "relu"):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        size = tuple(in_shape[1:])
        sizes = [size]  # sizes[level + 1]: the spatial size of down level `level`
        channels = in_shape[0]
        self.down = nn.ModuleList()
        for level, w in enumerate(widths):
            first, size = conv_unit(channels, w, size, "down" if level else "same", norm, activation)
            second, _ = conv_unit(w, w, size, "same", norm, activation)
            self.down.append(TimeSequential(first, second))
            sizes.append(size)
            channels = w
        self.up = nn.ModuleList()  # per level: "up" (↑ unit), then "merge" (two units after the skip concat)
        for level in (2, 1, 0):
            w, target = widths[level], sizes[level + 1]
            up = conv_unit(channels, w, target, "up", norm, activation)[0]
            merge = TimeSequential(conv_unit(2 * w, w, target, "same", norm, activation)[0],
                                   conv_unit(w, w, target, "same", norm, activation)[0])
            self.up.append(nn.ModuleDict({"up": up, "merge": merge}))
            channels = w
        self.out = conv_unit(width, out_channels, tuple(in_shape[1:]), "same", norm, None)[0]

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in self.down:
            x = level(t, x)
            skips.append(x)
        skips.pop()  # the bottom level feeds the up path directly
        for stage in self.up:
            x = stage["merge"](t, torch.cat([stage["up"](t, x), skips.pop()], dim=1))
        return self.out(t, x)
