"""``ModelCheckpoint`` whose ``last.ckpt`` is always the newest training state.

Lightning's own ``ModelCheckpoint(save_last=True)`` (2.6) writes ``last.ckpt`` only when it writes a
top-k file: with ``save_top_k=0`` nothing is saved until training ends (a killed run cannot be
resumed), with a monitored metric ``last.ckpt`` holds the last *best* epoch, and a run stopped by
``max_steps`` or ``max_time`` after a periodic save keeps that older file. This subclass takes the
same arguments and keeps Lightning's top-k files, but writes ``last.ckpt`` itself:

* every ``every_n_epochs`` epochs (the default: every epoch; the state at the epoch's end, written
  when the next epoch starts, once the epoch's row is in ``metrics.csv``, with its loop counters as the
  next epoch's start, which Lightning resumes alike with or without ``max_steps``), every
  ``every_n_train_steps`` optimiser steps, or every ``train_time_interval`` of training, whichever
  trigger is configured;
* once more when training ends, if the weights moved since the last write, so ``last.ckpt`` holds
  the weights that ``fit`` ended with (those the end-of-fit evaluation uses).

A run that fails (e.g. :class:`~pynodeta.train.divergence.TrainingDiverged`) writes no ``last.ckpt``:
the file on disk stays the last good state. ``last.ckpt`` is overwritten in place (no ``last-v1.ckpt``);
``pynodeta fit`` refuses a run folder that holds another run's files.
"""

from __future__ import annotations

import time
from weakref import proxy

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments, same top-k files); ``last.ckpt`` is the newest state.

    Same class name on purpose: the checkpoint's callback state keeps Lightning's key, so runs
    saved with Lightning's class resume with this one, and configs change only their class_path.
    """

    def __init__(self, *args, save_last: bool | None = True, **kwargs):
        if save_last == "link":
            raise ValueError("save_last='link' makes last.ckpt a link to the newest top-k file, which is not the "
                             "newest training state; pass save_last=True (the default)")
        super().__init__(*args, save_last=save_last, **kwargs)
        self._last_written_step: int | None = None   # global_step of this process's newest last.ckpt
        self._last_written_time: float | None = None  # time.monotonic() of that write
        self._pending: tuple[dict, str, int] | None = None  # an epoch's state, written at the next epoch's start

    # --- Lightning's own calls ---------------------------------------------------------------------------
    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        # Lightning calls this whenever it writes a top-k file, at its step/time triggers (deferred
        # while a monitored metric is missing) and on exceptions; last.ckpt is written at this
        # class's triggers instead (_take_last, then _write).
        return

    # --- the triggers of last.ckpt ------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        _start_the_epoch_afresh(trainer)
        # a resumed run starts at its checkpoint's state: nothing to write until it trains
        self._last_written_step = trainer.global_step
        self._last_written_time = time.monotonic()
        self._pending = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # top-k at step/time triggers
        if self._step_trigger_fired(trainer) or self._time_trigger_fired(trainer):
            self._write(trainer, self._take_last(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # top-k, as Lightning
        completed = trainer.fit_loop.epoch_progress.current.processed
        if self._every_n_epochs >= 1 and completed % self._every_n_epochs == 0:
            # The state is taken here, where Lightning resumes an epoch from, but written at the next
            # epoch's start (or at train end): Lightning appends the epoch's means to metrics.csv only
            # after this hook, and a file written now could survive a kill that loses that row.
            # Nothing trains in between, so the weights the state refers to do not change.
            self._pending = self._take_last(trainer)
            if self._pending is not None:
                _as_next_epochs_start(self._pending[0])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._write(trainer, self._pending)

    def on_train_end(self, trainer, pl_module) -> None:
        # replaces Lightning's "save last if nothing was saved": a periodic save may be older than the
        # stop (max_steps mid-epoch, max_time, the last epochs after the last trigger)
        self._write(trainer, self._pending)
        self._write(trainer, self._take_last(trainer))

    def _step_trigger_fired(self, trainer) -> bool:
        every = self._every_n_train_steps
        return every >= 1 and trainer.global_step % every == 0

    def _time_trigger_fired(self, trainer) -> bool:
        if self._train_time_interval is None or self._last_written_time is None:
            return False
        due = time.monotonic() - self._last_written_time >= self._train_time_interval.total_seconds()
        return bool(trainer.strategy.broadcast(due))  # rank 0's clock decides, so all ranks save together

    def _take_last(self, trainer) -> tuple[dict, str, int] | None:
        """(checkpoint, path, global_step) of last.ckpt now, or None when none is due."""
        if (not self.save_last or trainer.fast_dev_run or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING or trainer.global_step == self._last_written_step):
            return None
        path = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # before the dump: the path is part of this callback's saved state
        return trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only), path, trainer.global_step

    def _write(self, trainer, taken: tuple[dict, str, int] | None) -> None:
        self._pending = None
        if taken is None:
            return
        checkpoint, path, step = taken
        # Lightning's _save_checkpoint would also mark this step as saved, which makes it skip the
        # validation-end top-k save at the same step: last.ckpt is written beside that bookkeeping
        trainer.strategy.save_checkpoint(checkpoint, path)
        trainer.strategy.barrier("pynodeta.train.ModelCheckpoint")
        self._last_written_step, self._last_written_time = step, time.monotonic()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def _as_next_epochs_start(checkpoint: dict) -> None:
    """Write an epoch-end state's loop counters as the next epoch's start: the epoch counted as completed,
    the per-epoch batch, optimiser and scheduler counters back at zero (the totals kept).

    Lightning (2.6) resumes an epoch-end state right only without ``max_steps``: with it, the fit is
    "iteration based", always counted as restarting, and the finished epoch is resumed as if cut short, so
    2 or 3 of the next epoch's batches were skipped (3-batch epochs) and every later epoch shifted. From the
    next epoch's start it resumes the right batches either way; :func:`_start_the_epoch_afresh` mends the
    rest (``tests/train/test_last_checkpoint.py``).
    """
    loops = checkpoint.get("loops", {}).get("fit_loop")
    if loops is None:  # a weights-only checkpoint has no loop state
        return
    for counts in loops["epoch_progress"].values():
        counts["completed"] = counts["processed"]
    loops["epoch_loop.batch_progress"]["is_last_batch"] = False
    optimizer = loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    per_epoch = [loops["epoch_loop.batch_progress"], loops["epoch_loop.scheduler_progress"],
                 loops["epoch_loop.manual_optimization.optim_step_progress"], *optimizer.values()]
    for progress in per_epoch:  # as Lightning's reset_on_run at an epoch's start
        progress["current"] = dict.fromkeys(progress["current"], 0)


def _start_the_epoch_afresh(trainer) -> None:
    """A fit resumed at an epoch's start runs that epoch as a fresh one.

    With ``max_steps`` Lightning (2.6) marks the epoch loop as restarting even there, and a restarting epoch
    loop in a validating epoch reads its position before the first batch (batch index -1) as a validation
    check already done: it skips that epoch's validation and counts one step more in the step that
    metrics.csv logs. Nothing of the epoch ran before the save, so there is nothing to restart.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    epochs = trainer.fit_loop.epoch_progress.current
    between_epochs = epochs.ready == epochs.completed and epoch_loop.batch_progress.current.ready == 0
    if epoch_loop.restarting and between_epochs:
        epoch_loop.restarting = False  # its children (the validation loop) too
