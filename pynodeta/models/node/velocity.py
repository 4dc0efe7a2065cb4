"""Initial velocity / momentum of the second-order variants (HBNODE, SONODE)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["WithInitialVelocity", "INITIAL_VELOCITIES"]

INITIAL_VELOCITIES = ("zero", "learned")


class WithInitialVelocity(nn.Module):
    """x -> (x, v0): v0 = 0 ("zero"), or v0 = a learned 3×3 conv (a linear map for flat x) of x ("learned").

    forward(x): (batch, C, *spatial) -> a tuple of two tensors of that shape, the ODE's tuple state.
    """

    def __init__(self, in_shape: tuple[int, ...], kind: Literal["zero", "learned"] = "zero"):
        super().__init__()
        if kind not in INITIAL_VELOCITIES:
            raise ValueError(f"initial_velocity must be one of {INITIAL_VELOCITIES}, got {kind!r}")
        self.kind = kind
        if kind == "learned":
            channels = in_shape[0]
            self.net = (nn.Linear(channels, channels) if len(in_shape) == 1
                        else nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, (torch.zeros_like(x) if self.kind == "zero" else self.net(x))
