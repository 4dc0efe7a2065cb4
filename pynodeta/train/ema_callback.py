"""Lightning callback for the power-function EMA: update after every optimiser step, snapshots every
N steps (written by global rank 0 only), exact resume through the trainer checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import lightning
from torch import nn

from pynodeta.ema import PowerFunctionEMA

from .weight_averages import AVERAGES_KEY, store_average, stored_average_state

__all__ = ["PowerFunctionEMACallback"]


class PowerFunctionEMACallback(lightning.Callback):
    """Tracks ``PowerFunctionEMA`` of the network ``pl_module.<target>`` during ``fit``.

    Every rank keeps the averages (DDP keeps the weights equal across ranks, so they agree); only
    global rank 0 writes snapshots. A killed run resumed from its last trainer checkpoint continues
    the averages exactly; a run with only snapshots loses the steps since the last one.
    """

    def __init__(
        self,
        sigma_rels: tuple[float, ...] = (0.05, 0.10),   # profile widths tracked (the paper's pair)
        snapshot_every: int | None = None,                # write a snapshot every N optimiser steps; None: never
        snapshot_dir: str | None = None,                  # None: <the run's log dir>/phema
        target: str = "model",                            # attribute path of the network in the LightningModule
    ):
        super().__init__()
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 optimiser steps or None (none), got {snapshot_every}")
        self.sigma_rels = tuple(sigma_rels)
        self.snapshot_every = snapshot_every
        self.snapshot_dir = snapshot_dir
        self.target = target
        self.ema: PowerFunctionEMA | None = None
        self._pending_state: dict | None = None
        self._snapshot_folder: Path | None = None

    def setup(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Resolved here, on every rank: under DDP trainer.log_dir is a collective (it broadcasts rank 0's
        # folder), so asking for it on rank 0 alone, where the snapshot is written, waited for good.
        self._snapshot_folder = self.resolved_snapshot_dir(trainer)
        if self.ema is not None:
            return
        self.ema = PowerFunctionEMA(self._network(pl_module), self.sigma_rels)
        # one run id on every rank, rank 0's (its checkpoints and snapshots carry it): the ranks' EMAs are equal
        self.ema.run_id = trainer.strategy.broadcast(self.ema.run_id)
        if self._pending_state is not None:
            self.ema.load_state_dict(self._pending_state)
            self._pending_state = None

    def _network(self, pl_module: lightning.LightningModule) -> nn.Module:
        network = pl_module
        for name in self.target.split("."):
            if not hasattr(network, name):
                raise AttributeError(f"PowerFunctionEMACallback(target={self.target!r}): {type(pl_module).__name__} "
                                     f"has no attribute path {self.target!r}; pass the attribute holding the network")
            network = getattr(network, name)
        if not isinstance(network, nn.Module):
            raise TypeError(f"target {self.target!r} is a {type(network).__name__}, not a torch.nn.Module")
        return network

    def resolved_snapshot_dir(self, trainer: lightning.Trainer) -> Path:
        """The snapshot folder; under DDP call it on every rank (``trainer.log_dir`` is a collective)."""
        if self.snapshot_dir is not None:
            return Path(self.snapshot_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "phema"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimiser steps done; unchanged between gradient-accumulation micro-batches
        if self.ema is None or step <= self.ema.step:
            return
        self.ema.update(step)
        if self.snapshot_every is not None and step % self.snapshot_every == 0 and trainer.is_global_zero:
            self.ema.save_snapshot(os.fspath(self._snapshot_folder), step)

    def averaged(self, sigma_rel: float) -> nn.Module:
        """The averaged network for a tracked ``sigma_rel`` (eval mode)."""
        if self.ema is None:
            raise RuntimeError("the EMA exists once fit() has started; call averaged() during or after training")
        return self.ema.averaged(sigma_rel)

    # The averages travel in the checkpoint's weight-average entry, where the classic EMA's do
    # (pynodeta.train.weight_averages), so that sample/evaluate read both kinds one way.
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.ema is not None:
            store_average(checkpoint, "power_ema", self.ema, self.target)
        elif self._pending_state:
            checkpoint.setdefault(AVERAGES_KEY, {})["power_ema"] = {"target": self.target,
                                                                    "state": self._pending_state}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = stored_average_state(checkpoint, "power_ema")
        if state is not None:
            self.load_state_dict(state)

    def state_dict(self) -> dict:
        return {}  # see on_save_checkpoint

    def load_state_dict(self, state_dict: dict) -> None:  # also a checkpoint from before the shared entry
        if not state_dict:
            return
        if self.ema is not None:
            self.ema.load_state_dict(state_dict)
        else:
            self._pending_state = state_dict
