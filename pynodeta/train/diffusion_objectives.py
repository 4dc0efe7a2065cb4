"""What a DDPM network predicts (ε, x0 or v) and how each prediction becomes ε for the samplers.

With a = √ᾱ_t and s = √(1 − ᾱ_t) (a² + s² = 1) and x_t = a·x0 + s·ε:
ε-prediction (Ho et al. 2020) targets ε; x0-prediction ("sample") targets x0; v-prediction
(Salimans & Ho 2022, Eq. 10 of "Progressive Distillation") targets v = a·ε − s·x0.
Back to ε: from x0, ε = (x_t − a·x̂0)/s; from v, ε = s·x_t + a·v̂.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pynodeta.diffusion import DDPMSchedule

__all__ = ["PREDICTIONS", "Prediction", "prediction_target", "EpsilonView"]

Prediction = Literal["epsilon", "sample", "v"]
PREDICTIONS = ("epsilon", "sample", "v")


def _coefficients(schedule: DDPMSchedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, s) = (√ᾱ_t, √(1 − ᾱ_t)) shaped (batch, 1, ...) in like's dtype and device."""
    t = schedule.check_timesteps(t, like.shape[0])
    alpha_bar = schedule.alphas_cumprod[t.cpu()].to(dtype=like.dtype, device=like.device)
    shape = (-1, *([1] * (like.dim() - 1)))
    return alpha_bar.sqrt().reshape(shape), (1 - alpha_bar).sqrt().reshape(shape)


def prediction_target(prediction: Prediction, schedule: DDPMSchedule, x0: torch.Tensor, noise: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """The regression target of the network at (t, x_t = add_noise(x0, noise, t))."""
    if prediction == "epsilon":
        return noise
    if prediction == "sample":
        return x0
    if prediction == "v":
        a, s = _coefficients(schedule, t, x0)
        return a * noise - s * x0
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


class EpsilonView(nn.Module):
    """A network predicting ε, x0 or v, seen as an ε-network ``eps_model(t, x_t)`` for the DDPM samplers.

    forward(t, x, class_labels=None): t (batch,) integer timesteps in [0, T) (or a float tensor of fractional
    ones, as ``DenoiserFromEpsilon(timestep="interpolate")`` hands over: ᾱ is then interpolated linearly);
    x (batch, ...); class_labels one-hot (batch, num_classes) of a class-conditional network (passed on only
    when given) -> ε̂, shape of x.
    """

    time_aware = True

    def __init__(self, network: nn.Module, schedule: DDPMSchedule, prediction: Prediction = "epsilon"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.network, self.schedule, self.prediction = network, schedule, prediction

    def forward(self, t: torch.Tensor, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        out = self.network(t, x) if class_labels is None else self.network(t, x, class_labels=class_labels)
        out = out.to(x.dtype)  # a network run under autocast answers in bf16/fp16; the conversions stay in x's dtype
        if self.prediction == "epsilon":
            return out
        a, s = self._coefficients(t, x)
        if self.prediction == "sample":
            return (x - a * out) / s
        return s * x + a * out

    def _coefficients(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not t.is_floating_point():
            return _coefficients(self.schedule, t, x)
        table = self.schedule.alphas_cumprod.to(device=x.device)
        low = t.detach().floor().long().clamp(0, len(table) - 1)
        high = (low + 1).clamp(max=len(table) - 1)
        alpha_bar = torch.lerp(table[low], table[high], (t.to(table.dtype) - low.to(table.dtype)))
        alpha_bar = alpha_bar.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
