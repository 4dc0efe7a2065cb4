"""Step-size control: the initial step rule and the I / PI controllers.

All step-size arithmetic runs on Python floats (float64 on the host): no tensor ops and no device
round trips per step beyond reading the error ratio, and devices without float64 work unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["select_initial_step", "IController", "PIController", "make_controller"]


def _rms(x: torch.Tensor) -> torch.Tensor:
    # The same reduction torchdiffeq uses, so the first step (and hence every step) matches it.
    return x.abs().pow(2).mean().sqrt()


@torch.no_grad()
def select_initial_step(
    probe: Callable[[float, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    error_order: int,
    rtol,
    atol,
    norm: Callable[[torch.Tensor], torch.Tensor] | None,
) -> float:
    """Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4, in torchdiffeq's exact form.

    ``probe(h, y)`` evaluates the right-hand side a step ``h`` (a positive magnitude) after t0.
    Computed in y's dtype like torchdiffeq, so its first step is reproduced bit for bit.
    """
    norm = norm or _rms
    scale = atol + y0.abs() * rtol
    d0 = norm(y0 / scale)
    d1 = norm(f0 / scale)
    if d0 < 1e-5 or d1 < 1e-5:
        h0 = torch.tensor(1e-6, dtype=y0.dtype, device=y0.device)
    else:
        h0 = 0.01 * d0 / d1
    f1 = probe(float(h0), y0 + (direction * h0) * f0)
    d2 = norm((f1 - f0) / scale) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = torch.clamp(h0 * 1e-3, min=1e-6)
    else:
        # torchdiffeq passes order - 1 and takes the (order)-th root; error_order is that order.
        h1 = (0.01 / torch.maximum(d1, d2)) ** (1.0 / error_order)
    return float(torch.minimum(100 * h0, h1))


class IController:
    """Integral controller, torchdiffeq's: accepted steps never shrink, growth capped by ``ifactor``."""

    def __init__(self, error_order: int, safety: float, ifactor: float, dfactor: float):
        self.exponent = 1.0 / error_order
        self.safety, self.ifactor, self.dfactor = safety, ifactor, dfactor

    def next_step(self, dt: float, ratio: float, accepted: bool) -> float:
        if ratio == 0:
            return dt * self.ifactor
        if not math.isfinite(ratio):
            return dt * self.dfactor
        dfactor = 1.0 if ratio < 1 else self.dfactor
        return dt * min(self.ifactor, max(self.safety / ratio**self.exponent, dfactor))


class PIController(IController):
    """Proportional-integral controller (Gustafsson; Hairer & Wanner II, Sec. IV.2).

    On acceptance ``factor = safety * ratio^(-0.7/k) * previous_ratio^(0.4/k)`` (k = error order), which
    damps the step-size oscillations of the I controller on problems at the stability boundary;
    a rejected step falls back to the I rule and keeps the previous ratio.
    """

    def __init__(self, error_order: int, safety: float, ifactor: float, dfactor: float):
        super().__init__(error_order, safety, ifactor, dfactor)
        self.alpha, self.beta = 0.7 / error_order, 0.4 / error_order
        self.previous_ratio = 1.0

    def next_step(self, dt: float, ratio: float, accepted: bool) -> float:
        if not accepted or ratio == 0 or not math.isfinite(ratio):
            return super().next_step(dt, ratio, accepted)
        factor = self.safety * ratio ** (-self.alpha) * self.previous_ratio**self.beta
        self.previous_ratio = max(ratio, 1e-4)
        return dt * min(self.ifactor, max(factor, self.dfactor))


def make_controller(kind: str, error_order: int, safety: float, ifactor: float, dfactor: float) -> IController:
    if kind == "i":
        return IController(error_order, safety, ifactor, dfactor)
    if kind == "pi":
        return PIController(error_order, safety, ifactor, dfactor)
    raise ValueError(f"controller must be 'i' or 'pi', got {kind!r}")
