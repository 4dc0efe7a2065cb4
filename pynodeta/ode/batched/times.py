"""Output times of a per-sample solve: shared ``(n,)`` or one row per sample ``(batch, n)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SampleTimes", "check_sample_times"]


@dataclass(frozen=True)
class SampleTimes:
    """Output times in solver time ``s = direction * t`` (increasing in every row), float64.

    Attributes:
        s: ``(batch, n)`` solver times of the outputs; ``s[:, 0]`` is each sample's start, ``s[:, -1]`` its end.
        direction: ``(batch,)`` +1 (forward in time) or -1 (backward), per sample.
    """

    s: torch.Tensor
    direction: torch.Tensor

    @property
    def start(self) -> torch.Tensor:
        return self.s[:, 0]

    @property
    def end(self) -> torch.Tensor:
        return self.s[:, -1]

    def user_time(self, s: torch.Tensor) -> torch.Tensor:
        """Solver time back to the caller's time (multiplying by +-1 is exact)."""
        return self.direction * s


def check_sample_times(t: object, batch: int) -> torch.Tensor:
    """``t`` checked and expanded to ``(batch, n)``; every row strictly monotone (its own direction)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a floating-point torch.Tensor of output times, shaped (n,) or (batch, n); "
                        f"got {type(t).__name__}")
    if not torch.is_floating_point(t):
        raise TypeError(f"t must be floating point, got dtype {t.dtype}; pass e.g. torch.tensor([0.0, 1.0])")
    if t.ndim == 1:
        t = t.expand(batch, -1)
    elif t.ndim != 2 or t.shape[0] != batch:
        raise ValueError(f"with batched=True, t must be shaped (n,) (times shared by the batch) or (batch, n) = "
                         f"({batch}, n) (each sample's own times), got {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError("t must hold at least one output time per sample, got shape " f"{tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("t must be finite; it holds NaN or Inf")
    if t.shape[1] > 1:
        steps = t[:, 1:] - t[:, :-1]
        monotone = (steps > 0).all(dim=1) | (steps < 0).all(dim=1)
        if not monotone.all():
            bad = (~monotone).nonzero().flatten().tolist()
            raise ValueError(f"each row of t must be strictly increasing or strictly decreasing (no repeats); "
                             f"rows {bad[:8]} are not: sort them, e.g. torch.sort(t, dim=1).values")
    return t


def solver_times(t: torch.Tensor) -> SampleTimes:
    """``(batch, n)`` user times -> solver times that increase in every row."""
    t64 = t.detach().to(torch.float64)
    if t64.shape[1] > 1:
        direction = torch.where(t64[:, 1] < t64[:, 0], -1.0, 1.0).to(torch.float64)
    else:
        direction = torch.ones(t64.shape[0], dtype=torch.float64, device=t64.device)
    return SampleTimes(direction[:, None] * t64, direction)
