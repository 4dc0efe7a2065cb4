"""Statistics of a per-sample solve: the shared-step fields plus one count per sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..stats import SolveStats

__all__ = ["BatchedSolveStats"]


def _counts() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.long)


@dataclass
class BatchedSolveStats(SolveStats):
    """``SolveStats`` of a ``solve(..., batched=True)``: aggregate fields and per-sample tensors.

    Aggregate fields (as in the shared-step mode where the meaning carries over):
        nfe, nfe_adjoint: calls of func (each call evaluates the whole batch), forward and backward.
        n_steps, n_accepted, n_rejected: trial, accepted and rejected steps summed over the samples.
        t_evaluated, step_sizes, t_evaluated_adjoint: stay empty (times differ per sample).
    Per-sample fields, ``(batch,)`` int64 tensors on the state's device:
        nfe_per_sample: evaluations of func that advanced this sample (initial-step probes included;
            calls made while the sample waited at its end time are not counted).
        n_steps_per_sample, n_accepted_per_sample, n_rejected_per_sample: its trial, accepted and
            rejected steps.
        nfe_adjoint_per_sample: the same as nfe_per_sample for the backward (adjoint) solve.
    """

    nfe_per_sample: torch.Tensor = field(default_factory=_counts)
    n_steps_per_sample: torch.Tensor = field(default_factory=_counts)
    n_accepted_per_sample: torch.Tensor = field(default_factory=_counts)
    nfe_adjoint_per_sample: torch.Tensor = field(default_factory=_counts)

    @property
    def n_rejected_per_sample(self) -> torch.Tensor:
        return self.n_steps_per_sample - self.n_accepted_per_sample

    def reset_per_sample(self, batch: int, device: torch.device) -> None:
        """Zeroed per-sample counters for a batch (the adjoint ones too)."""
        for name in ("nfe_per_sample", "n_steps_per_sample", "n_accepted_per_sample", "nfe_adjoint_per_sample"):
            setattr(self, name, torch.zeros(batch, dtype=torch.long, device=device))

    def total_steps(self) -> None:
        """Set the aggregate step counts from the per-sample ones."""
        self.n_steps = int(self.n_steps_per_sample.sum())
        self.n_accepted = int(self.n_accepted_per_sample.sum())
        self.n_rejected = self.n_steps - self.n_accepted

    def summary(self) -> str:
        per_sample = self.nfe_per_sample.float()
        spread = (f", per-sample nfe {int(per_sample.min())}..{int(per_sample.max())} "
                  f"(mean {float(per_sample.mean()):.1f})") if per_sample.numel() else ""
        return super().summary() + spread
