"""How far a Lightning run is through its budget, for schedules that decay over the whole run.

A run ends at whichever of ``trainer.max_steps``, ``max_epochs`` and ``max_time`` comes first. With a budget
in minutes the number of steps is not known ahead, so the progress is the larger of the step fraction
(``trainer.estimated_stepping_batches``) and the elapsed fraction of ``max_time`` (Lightning's ``Timer``,
whose elapsed time is restored on resume).
"""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import Timer

__all__ = ["RunProgress"]


class RunProgress:
    """``progress(step)`` in [0, 1]: the fraction of the trainer's budget used after ``step`` optimiser steps."""

    def __init__(self, trainer, owner: str):
        self.trainer = trainer
        total = float(trainer.estimated_stepping_batches)
        self.total_steps = total if math.isfinite(total) and total > 0 else None
        self.timer = next((c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None),
                          None)
        if self.total_steps is None and self.timer is None:
            raise ValueError(f"{owner} decays over the run's length, but the trainer sets no limit: set "
                             "trainer.max_steps, max_epochs or max_time, or choose a schedule without decay")

    def __call__(self, step: int) -> float:
        fractions = [0.0]
        if self.total_steps is not None:
            fractions.append(step / self.total_steps)
        if self.timer is not None:
            elapsed = self.timer.time_elapsed()
            duration = elapsed + self.timer.time_remaining()
            fractions.append(elapsed / duration if duration > 0 else 1.0)
        return min(1.0, max(fractions))
