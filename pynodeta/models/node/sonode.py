"""Second-order neural ODE (SONODE, Norcliffe et al., 2020): x'' = f(t, x, x') as a first-order system."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SecondOrderField"]


class SecondOrderField(nn.Module):
    """dx/dt = v,  dv/dt = f(t, [x, v])  (the acceleration sees position and velocity).

    forward(t, (x, v)): two tensors (batch, C, *spatial) -> (dx/dt, dv/dt). ``backbone`` maps
    2C channels (x and v concatenated along dim 1) to C.
    """

    time_aware = True

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, t, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, v = state
        return v, self.backbone(t, torch.cat([x, v], dim=1))
