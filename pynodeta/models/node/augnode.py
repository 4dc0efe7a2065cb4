"""Augmented neural ODE (Dupont et al., 2019): solve in a space with extra zero-initialised channels."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ZeroAugment"]


class ZeroAugment(nn.Module):
    """x -> [x, 0]: append ``aug_channels`` zero channels (features, for flat inputs) along dim 1.

    forward(x): (batch, C, *spatial) -> (batch, C + aug_channels, *spatial). The ODE then runs on the
    augmented state with a backbone built for C + aug_channels channels, and the head reads all of it.
    """

    def __init__(self, aug_channels: int):
        super().__init__()
        if aug_channels < 1:
            raise ValueError(f"aug_channels must be >= 1, got {aug_channels}")
        self.aug_channels = aug_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(x.shape[0], self.aug_channels, *x.shape[2:])
        return torch.cat([x, zeros], dim=1)
