"""What every pynodeta LightningModule shares, whatever the model family: the optimiser preset with
its clipping, stage logging and exact resume (global RNG states in the checkpoint).

A model family subclasses :class:`TrainingModule` (the neural-ODE one is
:class:`pynodeta.train.NODEModule`) and writes ``training_step``/``validation_step``/``test_step``
with :meth:`TrainingModule.log_stage`; ``pynodeta fit`` accepts any subclass as its ``model``.
"""

from __future__ import annotations

from typing import ClassVar

import lightning
import torch

from .optim import AdamWPreset, OptimizerPreset
from .rng import collect_rng_states, decorrelate_rank_generators, restore_rng_states

__all__ = ["TrainingModule"]

RNG_CHECKPOINT_KEY = "pynodeta_rng_states"


class TrainingModule(lightning.LightningModule):
    """Base LightningModule of every pynodeta model family.

    What it does for a subclass:

    - ``configure_optimizers`` returns ``self.optim.build(self)``: a preset may give one optimiser,
      several parameter groups, or several optimisers (the latter needs
      ``self.automatic_optimization = False`` in the subclass, as Lightning requires);
    - gradient clipping: Lightning's own (``trainer.gradient_clip_val``), then the preset's
      ``clip(self)`` (e.g. a second, tighter clip of one parameter group);
    - :meth:`log_stage` logs ``{stage}/loss`` and ``{stage}/<metric>`` as epoch means
      (synchronised over DDP ranks once per epoch);
    - exact resume: the Python, NumPy and torch generators' states travel in every checkpoint, so
      a resumed run draws the noise, dropout masks and batches the uninterrupted run would have;
    - under DDP, each rank draws noise and dropout masks of its own (``decorrelate_rank_generators``).

    ``summary_formats`` tells the run summary (``pynodeta fit --test_after_fit true``) which logged
    metrics to print first and how; every other ``test/<name>`` metric follows as
    ``test <name> {value:.4f}``.
    """

    summary_formats: ClassVar[dict[str, str]] = {}  # {logged key: format with one {} for the value}

    def __init__(
        self,
        optim: OptimizerPreset | None = None,  # optimiser, schedule and clipping; None: default_optim()
    ):
        super().__init__()
        if optim is not None and not isinstance(optim, OptimizerPreset):
            raise TypeError(
                f"optim must be an OptimizerPreset (e.g. pynodeta.train.AdamWPreset()), got {type(optim).__name__}")
        self.optim = optim if optim is not None else self.default_optim()

    def default_optim(self) -> OptimizerPreset:
        """The preset used when none is given; a model family overrides it with its paper's setup."""
        return AdamWPreset()

    # --- logging --------------------------------------------------------------------------------------
    def log_stage(self, stage: str, loss: torch.Tensor, metrics: dict[str, torch.Tensor | float],
                  batch_size: int, prog_bar: tuple[str, ...] = ()) -> None:
        """Log ``{stage}/loss`` and ``{stage}/<name>`` for every metric as epoch means.

        stage: ``train``, ``val`` or ``test``; batch_size weights the epoch mean; metric names in
        ``prog_bar`` (and the loss, outside testing) are shown in the progress bar.
        """
        # epoch means only; under DDP they are averaged over ranks once per epoch (sync_dist)
        log = dict(on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", **log)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in prog_bar, **log)

    # --- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        return self.optim.build(self)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's own clipping (trainer.gradient_clip_val) first, then the preset's: the TA-BN
        # setup clips the γ/β group separately, which one global norm cannot express.
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.optim.clip(self)

    # --- randomness under DDP and exact resume ---------------------------------------------------------
    def on_train_start(self) -> None:
        # after a resumed run's generator states are restored: each DDP rank draws noise of its own
        if self.trainer.world_size > 1:
            decorrelate_rank_generators(self.global_rank)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[RNG_CHECKPOINT_KEY] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if RNG_CHECKPOINT_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_CHECKPOINT_KEY])
