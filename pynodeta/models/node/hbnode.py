"""Heavy-ball neural ODE (HBNODE, Xia et al., 2021): a damped second-order flow in first-order form."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HeavyBallField"]


class HeavyBallField(nn.Module):
    """dh/dt = m,  dm/dt = -γ·m + f(t, h),  γ = sigmoid(θ) > 0 learnable (Xia et al., 2021).

    forward(t, (h, m)): two tensors of the state's shape -> (dh/dt, dm/dt). ``backbone`` is f, a
    time-aware map from the state to itself.
    """

    time_aware = True

    def __init__(
        self,
        backbone: nn.Module,           # f(t, h), same shape in and out
        gamma_logit: float = -3.0,     # initial θ; γ = sigmoid(-3) ≈ 0.047 (the HBNODE code's start)
    ):
        super().__init__()
        self.backbone = backbone
        self.gamma_logit = nn.Parameter(torch.tensor(float(gamma_logit)))

    @property
    def gamma(self) -> torch.Tensor:
        """The damping γ = sigmoid(θ)."""
        return torch.sigmoid(self.gamma_logit)

    def forward(self, t, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, m = state
        return m, -self.gamma * m + self.backbone(t, h)
