"""``ProgressLines``: one plain line of training progress every so often, for runs whose output goes to a log.

Lightning's progress bar redraws one terminal line; in a log file or CI it is either noise or (switched
off, as the diffusion configs do) nothing at all, so a 7-minute fit printed nothing until its summary.
This callback prints, every ``every_seconds`` of wall time and at the end of each validation (with FD / floor
when that validation computed it), one line:

    pynodeta: epoch 12, step 300, train/loss 0.0412, 5.1 steps/s, 59 s elapsed, stops within 6.0 min (max_time)
"""

from __future__ import annotations

import sys
import time

import lightning

__all__ = ["ProgressLines"]


class ProgressLines(lightning.Callback):
    """Print a progress line every ``every_seconds`` of training (rank 0 only)."""

    def __init__(self, every_seconds: float = 30.0):
        if isinstance(every_seconds, bool) or not isinstance(every_seconds, (int, float)) or not every_seconds > 0:
            raise ValueError(f"every_seconds must be a number > 0, got {every_seconds!r}")
        self.every_seconds = float(every_seconds)
        self._started = self._last = None
        self._last_step = 0
        self._last_evaluation = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = self._last = time.monotonic()
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last >= self.every_seconds:
            self._print(trainer, now)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._started is not None:
            # FD only when this validation computed it (a DiffusionModule's last_evaluation is then a new dict)
            evaluation = getattr(pl_module, "last_evaluation", None)
            fresh = evaluation is not self._last_evaluation and bool(evaluation)
            self._last_evaluation = evaluation
            self._print(trainer, time.monotonic(), validation=True, with_fd=fresh)

    def _print(self, trainer, now: float, validation: bool = False, with_fd: bool = False) -> None:
        steps_per_second = (trainer.global_step - self._last_step) / max(now - self._last, 1e-9)
        self._last, self._last_step = now, trainer.global_step
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}", f"step {trainer.global_step}"]
        names = ("train/loss", "val/loss", *(("val/fd_ratio",) if with_fd else ())) if validation else ("train/loss",)
        for name in names:
            if name in metrics:
                parts.append(f"{name} {float(metrics[name]):.4g}")
        if not validation:
            parts.append(f"{steps_per_second:.1f} steps/s")
        parts.append(f"{now - self._started:.0f} s elapsed")
        remaining = _time_left(trainer, now - self._started)
        if remaining is not None:
            parts.append(f"stops within {remaining / 60:.1f} min (max_time)")
        print("pynodeta: " + ", ".join(parts), file=sys.stdout, flush=True)


def _time_left(trainer, elapsed: float) -> float | None:
    for callback in trainer.callbacks:
        duration = getattr(callback, "_duration", None)  # Lightning's Timer, which trainer.max_time creates
        if type(callback).__name__ == "Timer" and duration is not None:
            return max(duration - elapsed, 0.0)
    return None
