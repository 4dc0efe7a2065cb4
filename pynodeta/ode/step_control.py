"""Step-size control at run time: the initial step rule and the I / PI step-size rules.

The user-facing settings are the typed ``IController`` / ``PIController`` of ``settings.py``; the
classes here are their run-time state inside one solve.

All step-size arithmetic runs on Python floats (float64 on the host): no tensor ops and no device
round trips per step beyond reading the error ratio, and devices without float64 work unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["select_initial_step", "StepControl", "make_step_control"]

_RESOLVED_DTYPES = (torch.float32, torch.float64)
_HOST_SCALARS = {torch.float32: np.float32, torch.float64: np.float64}


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
    max_probe: float = math.inf,
) -> float:
    """Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4, in torchdiffeq's exact form.

    ``probe(h, y)`` evaluates the right-hand side a step ``h`` (a positive magnitude) after t0, with
    h <= ``max_probe`` (Hairer's HINIT caps it at HMAX, by default |x_end − x0|; torchdiffeq does not).
    Computed in y's dtype like torchdiffeq, so its first step is reproduced bit for bit: the norms are
    tensor reductions, the scalar arithmetic between them runs on host scalars of the same dtype (numpy's
    float32/float64, whose IEEE operations round as torch's 0-d ones do), with two host reads instead of
    one per comparison. float16 and bfloat16 states are measured in float32, where the norms of y / atol
    cannot overflow.
    """
    state_dtype = y0.dtype
    if state_dtype not in _RESOLVED_DTYPES:
        y0, f0 = y0.float(), f0.float()
    real = _HOST_SCALARS[y0.dtype]
    scale = atol + y0.abs() * rtol
    d0, d1 = _norms(norm, real, y0 / scale, f0 / scale)
    if d0 < real(1e-5) or d1 < real(1e-5):
        h0 = real(1e-6)
    else:
        h0 = real(0.01) * d0 / d1
    if h0 > max_probe:
        h0 = real(max_probe)
    f1 = probe(float(h0), (y0 + f0 * float(direction * h0)).to(state_dtype))
    (d2,) = _norms(norm, real, (f1.to(f0.dtype) - f0) / scale)
    d2 = d2 / h0
    if d1 <= real(1e-15) and d2 <= real(1e-15):
        h1 = np.maximum(h0 * real(1e-3), real(1e-6))
    else:
        # torchdiffeq passes order - 1 and takes the (order)-th root; error_order is that order. The power
        # stays a torch op: numpy's float32 pow rounds differently.
        base = real(1) / np.maximum(d1, d2) * real(0.01)  # torch's 0.01 / x is x.reciprocal() * 0.01
        h1 = real(float(torch.tensor(float(base), dtype=y0.dtype) ** (1.0 / error_order)))
    return float(np.minimum(real(100) * h0, h1))


def _norms(norm: Callable[[torch.Tensor], torch.Tensor] | None, real: type, *xs: torch.Tensor) -> list:
    """The norms of ``xs`` as host scalars of type ``real``, with one host read.

    The default is torchdiffeq's RMS, ``x.abs().pow(2).mean().sqrt()``: |x|^2 is x*x exactly and mean is
    sum / n exactly, so stacking the sums first gives the same values bit for bit. (The square root stays
    a torch op: torch's CPU sqrt is not always the correctly rounded one that the host computes.)
    """
    if norm is None:
        sums = torch.stack([x.square().sum() for x in xs])
        return [real(v) for v in sums.div_(xs[0].numel()).sqrt_().tolist()]
    values = [norm(x) for x in xs]
    if all(isinstance(v, torch.Tensor) for v in values) and len({v.dtype for v in values}) == 1:
        values = torch.stack(values).tolist()
    return [real(float(v)) for v in values]


class StepControl:
    """Integral rule, torchdiffeq's: accepted steps never shrink, growth capped by ``ifactor``."""

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


class _PIStepControl(StepControl):
    """Proportional-integral rule (Gustafsson; Hairer & Wanner II, Sec. IV.2).

    On acceptance ``factor = safety * ratio^(-alpha/k) * previous_ratio^(beta/k)`` (k = error order,
    (alpha, beta) the gains, (0.7, 0.4) by default), which damps the step-size oscillations of the I rule
    on problems at the stability boundary; a rejected step falls back to the I rule and keeps the
    previous ratio.
    """

    def __init__(self, error_order: int, safety: float, ifactor: float, dfactor: float,
                 gains: tuple[float, float]):
        super().__init__(error_order, safety, ifactor, dfactor)
        self.alpha, self.beta = gains[0] / error_order, gains[1] / error_order
        self.previous_ratio = 1.0

    def next_step(self, dt: float, ratio: float, accepted: bool) -> float:
        if not accepted or ratio == 0 or not math.isfinite(ratio):
            return super().next_step(dt, ratio, accepted)
        factor = self.safety * ratio ** (-self.alpha) * self.previous_ratio**self.beta
        self.previous_ratio = max(ratio, 1e-4)
        return dt * min(self.ifactor, max(factor, self.dfactor))


def make_step_control(kind: str, error_order: int, safety: float, ifactor: float, dfactor: float,
                      gains: tuple[float, float] = (0.7, 0.4)) -> StepControl:
    """The run-time rule of an ``IController`` (kind "i") or ``PIController`` (kind "pi")."""
    if kind == "i":
        return StepControl(error_order, safety, ifactor, dfactor)
    if kind == "pi":
        return _PIStepControl(error_order, safety, ifactor, dfactor, gains)
    raise ValueError(f"controller must be 'i' or 'pi', got {kind!r}")
