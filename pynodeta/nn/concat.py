"""Concatenated-time layers, as in the original neural-ODE code: a constant channel holding t."""

from __future__ import annotations

import torch
from torch import nn

from .time import time_as_tensor

__all__ = ["ConcatConv2d", "ConcatLinear"]


class ConcatConv2d(nn.Module):
    """Convolution over ``[t-channel, x]``: ``Conv([t·1, x]) = Conv_x(x) + t·v`` (+ border effects).

    Away from zero padding the t channel only adds a per-channel offset ``t·v_k`` (v_k = sum of
    the kernel slice that reads the t channel), which any per-channel normalisation after it
    cancels: the vanishing timestep embedding of Kim et al. (2024).

    forward(t, x): t a float, 0-d tensor or (batch,) tensor (per-sample times supported);
    x: (batch, in_channels, height, width) -> (batch, out_channels, height', width').
    """

    time_aware = True

    def __init__(
        self,
        in_channels: int,          # channels of x (the t channel is added on top)
        out_channels: int,         # output channels
        kernel_size: int = 3,      # square kernel
        stride: int = 1,
        padding: int = 0,          # zero padding; 0 keeps the t offset exactly per-channel
        bias: bool = True,         # bias of the operand branch (see apply_bias_init_policy)
        transpose: bool = False,   # ConvTranspose2d instead of Conv2d (the "up" convs)
        dilation: int = 1,
        output_padding: int = 0,   # only for transpose=True
    ):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if output_padding and not transpose:
            raise ValueError("output_padding is only meaningful with transpose=True")
        if transpose:
            self.conv = nn.ConvTranspose2d(in_channels + 1, out_channels, kernel_size, stride=stride,
                                           padding=padding, output_padding=output_padding, bias=bias,
                                           dilation=dilation)
        else:
            self.conv = nn.Conv2d(in_channels + 1, out_channels, kernel_size, stride=stride,
                                  padding=padding, bias=bias, dilation=dilation)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        t = time_as_tensor(t, x)
        tt = t.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3])
        return self.conv(torch.cat([tt, x], dim=1))


class ConcatLinear(nn.Module):
    """Linear map over ``[t, x]``: ``W [t, x] + b = W_x x + t·w_t + b``.

    forward(t, x): t a float, 0-d or (batch,) tensor; x: (batch, in_features) -> (batch, out_features).
    """

    time_aware = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.linear = nn.Linear(in_features + 1, out_features, bias=bias)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        t = time_as_tensor(t, x)
        tt = t.reshape(-1, 1).expand(x.shape[0], 1)
        return self.linear(torch.cat([tt, x], dim=1))
