"""A callback the DDP tests put into ``pynodeta fit`` configs: each rank writes what it holds to ``rank<r>.pt``.

Recorded: the weights Lightning's DDP starts from (rank 0's, broadcast), the first batch this rank trained
on and the state of its torch generator just before, the weights after the first optimiser step, and at
the end of training the network, the objective (EDM2's uncertainty head), the timestep sampler's state,
the classic EMA and the power-function EMA (with its run id).
"""

from __future__ import annotations

from pathlib import Path

import lightning
import torch

from pynodeta.train.ema_callback import PowerFunctionEMACallback


def _copy(state: dict) -> dict:
    return {key: value.detach().clone() if isinstance(value, torch.Tensor) else value for key, value in state.items()}


class RankStateProbe(lightning.Callback):
    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.record: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.record["initial_module"] = _copy(pl_module.state_dict())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == 0:
            self.record["first_batch"] = [part.detach().clone() for part in batch]
            self.record["rng_before_first_step"] = torch.get_rng_state()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == 1 and "module_after_first_step" not in self.record:
            self.record["module_after_first_step"] = _copy(pl_module.state_dict())

    def on_train_end(self, trainer, pl_module) -> None:
        self.record["module"] = _copy(pl_module.state_dict())
        self.record["timestep_sampler"] = pl_module.objective.training_state()
        self.record["ema"] = pl_module.ema.state_dict() if pl_module.ema is not None else None
        power = [c for c in trainer.callbacks if isinstance(c, PowerFunctionEMACallback)]
        self.record["power_ema"] = power[0].ema.state_dict() if power else None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")
