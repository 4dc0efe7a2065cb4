"""Per-sample step-size control: the initial step, the error ratio and the I / PI rules, one value per sample.

The rules are those of the shared-step mode (``step_control.py``, torchdiffeq's), written on ``(batch,)``
tensors: every reduction runs over one sample's features only, so no sample's step depends on another's.
Step sizes and times are float64 tensors; the state's dtype is used where torchdiffeq uses it (the
initial-step norms), so a batch of one takes the same steps as the shared-step mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..backends.rk_parts import weighted_sum

__all__ = ["rms_per_sample", "ErrorRatio", "select_initial_steps", "StepRule"]

Norm = Callable[[torch.Tensor], torch.Tensor]  # (batch, features) -> (batch,)


def rms_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over each row of ``x: (batch, features)``: one sample's features only (the reduction
    of the shared-step mode's error ratio, so a batch of one takes its steps)."""
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).div_(math.sqrt(max(x.shape[1], 1)))


def mixed_rms(sizes: tuple[int, ...]) -> Norm:
    """The largest per-part RMS of each row (parts of consecutive columns), e.g. the adjoint's (y, a)."""

    def norm(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([rms_per_sample(part) for part in torch.split(x, sizes, dim=1)]).amax(dim=0)

    return norm


class ErrorRatio:
    """norm(error / (atol + rtol * max(|y|, |y1|))) per sample, as a float64 ``(batch,)`` tensor.

    The error h * sum_j e_j k_j is summed in units of its first weight e_0, and e_0 divides the
    tolerances instead, so the quotient the norm sees is unchanged: no op of its own for the scaling.
    The tolerances are 0-d host tensors of y's dtype, made once: a Python-number operand is converted
    by every op that takes it, and a 0-d host tensor reaches a GPU kernel as an argument, like a number."""

    def __init__(self, err_rows, rtol: float, atol: float, norm: Norm):
        self.err_rows, self.norm = err_rows, norm
        first = err_rows[0][1]
        self.tolerances = (rtol / first, atol / first)
        self.operands: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, ks, y: torch.Tensor, y1: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # the decision needs no graph; outside autograd the context is skipped
            with torch.no_grad():
                return self._ratio(ks, y, y1, h)
        return self._ratio(ks, y, y1, h)

    def _ratio(self, ks, y: torch.Tensor, y1: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.operands is None or self.operands[0].dtype != y.dtype:
            self.operands = tuple(torch.scalar_tensor(v, dtype=y.dtype) for v in self.tolerances)
        rtol, atol = self.operands
        if len(self.err_rows) == 1:
            error = torch.mul(ks[self.err_rows[0][0]], h)
        else:
            error = weighted_sum(ks, self.err_rows).mul_(h)
        tol = torch.maximum(y.abs(), y1.abs()).mul_(rtol).add_(atol)
        return self.norm(error.div_(tol)).to(torch.float64)


@torch.no_grad()
def select_initial_steps(probe, y0: torch.Tensor, f0: torch.Tensor, direction: torch.Tensor, error_order: int,
                         rtol: float, atol: float, norm: Norm) -> torch.Tensor:
    """Hairer, Norsett & Wanner I, Sec. II.4 in torchdiffeq's form, per sample: a float64 ``(batch,)`` tensor.

    ``probe(h, y)`` evaluates the right-hand side a (positive, per-sample) step ``h`` after each sample's
    start. Computed in y's dtype (float32 for half types), as the shared-step mode does.
    """
    state_dtype = y0.dtype
    if state_dtype not in (torch.float32, torch.float64):
        y0, f0 = y0.float(), f0.float()
    scale = y0.abs().mul(rtol).add(atol)
    d0, d1 = norm(y0 / scale), norm(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    signed = (direction.to(h0.dtype) * h0)[:, None]
    f1 = probe(h0.to(torch.float64), (y0 + signed * f0).to(state_dtype))
    d2 = norm((f1.to(f0.dtype) - f0) / scale) / h0
    flat = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = torch.where(flat, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / torch.maximum(d1, d2)) ** (1.0 / error_order))
    return torch.minimum(100 * h0, h1).to(torch.float64)


class StepRule:
    """The I rule (torchdiffeq's: accepted steps never shrink, growth capped by ``ifactor``) and, with
    ``gains``, the PI rule on accepted steps (Gustafsson; Hairer & Wanner II, Sec. IV.2), per sample."""

    def __init__(self, error_order: int, safety: float, ifactor: float, dfactor: float,
                 gains: tuple[float, float] | None, batch: int, device: torch.device):
        self.exponent = 1.0 / error_order
        self.safety, self.ifactor, self.dfactor = safety, ifactor, dfactor
        self.pi = None if gains is None else (gains[0] / error_order, gains[1] / error_order)
        self.previous_ratio = torch.ones(batch, dtype=torch.float64, device=device)
        self.constants: tuple[torch.Tensor, ...] | None = None  # safety, 1, dfactor as 0-d tensors

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        # tensor operands: a Python number would be converted by every op that takes it
        if self.constants is None or self.constants[0].device != device:
            self.constants = tuple(torch.tensor(v, dtype=torch.float64, device=device)
                                   for v in (self.safety, 1.0, self.dfactor))
        return self.constants

    def accepts(self, ratio: torch.Tensor) -> torch.Tensor:
        """ratio <= 1, per sample."""
        return ratio <= self._constants(ratio.device)[1]

    def next_step(self, dt: torch.Tensor, ratio: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # step sizes need no graph; outside autograd the context is skipped
            with torch.no_grad():
                return self._next_step(dt, ratio, accepted)
        return self._next_step(dt, ratio, accepted)

    def _next_step(self, dt: torch.Tensor, ratio: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        # ratio 0 -> safety/0 = inf, clamped to ifactor; ratio inf -> 0, raised to dfactor; NaN -> dfactor
        # (fmax ignores NaN): the shared-step rule's special cases without extra branches.
        safety, one, dfactor = self._constants(ratio.device)
        lower = torch.where(ratio < one, one, dfactor)
        factor = torch.fmax(torch.div(safety, ratio.pow(self.exponent)).clamp(max=self.ifactor), lower)
        if self.pi is not None:
            alpha, beta = self.pi
            use_pi = accepted & torch.isfinite(ratio) & (ratio > 0)
            safe_ratio = torch.where(use_pi, ratio, 1.0)
            pi_factor = self.safety * safe_ratio.pow(-alpha) * self.previous_ratio.pow(beta)
            factor = torch.where(use_pi, pi_factor.clamp(self.dfactor, self.ifactor), factor)
            self.previous_ratio = torch.where(use_pi, safe_ratio.clamp(min=1e-4), self.previous_ratio)
        return dt * factor
