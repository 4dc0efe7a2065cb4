"""Tiny stand-in networks for the training tests: an ODE block that keeps its SolveStats, an
8x8-digits classifier, a trajectory model and a non-ODE TrainingModule, small enough to fit a batch in milliseconds."""

from __future__ import annotations

import torch
from torch import nn

from pynodeta.nn import ConcatLinear, TimeSequential, make_norm
from pynodeta.train import OptimizerPreset, TrainingModule

from ..tiny_ode_block import TinyODEBlock


def tiny_field(width: int, norm: str) -> TimeSequential:
    # outside="clamp": dopri5's initial-step probe may look just past t = 1
    options = {"outside": "clamp", "M": 4} if norm == "tabn" else {}
    return TimeSequential(ConcatLinear(width, width), make_norm(norm, width, dims=1, **options), nn.Tanh(),
                          ConcatLinear(width, width))


class TinyDigitsClassifier(nn.Module):
    """x (batch, 1, 8, 8) -> logits (batch, num_classes) through one small ODE block."""

    def __init__(self, width: int = 8, norm: str = "tabn", num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        self.lift = nn.Sequential(nn.Flatten(), nn.Linear(64, width))
        self.ode = TinyODEBlock(tiny_field(width, norm))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ode(self.lift(x)))


class TinyTrajectoryModel(nn.Module):
    """model(t0, y0, t) -> (len(t), batch, dim), starting at y0 at time t[0] = t0."""

    def __init__(self, dim: int = 2, width: int = 8, norm: str = "tabn"):
        super().__init__()
        self.lift, self.project = nn.Linear(dim, width), nn.Linear(width, dim)
        self.ode = TinyODEBlock(tiny_field(width, norm))

    def forward(self, t0, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.project(self.ode(self.lift(y0), t))


class TinySoftmaxRegression(TrainingModule):
    """A non-ODE TrainingModule: softmax regression on 8x8 digits that reports its error rate, not
    accuracy, so the command and the run summary are seen to work for any model family."""

    summary_formats = {"test/error_rate": "test error rate {:.3f}"}

    def __init__(self, optim: OptimizerPreset | None = None):
        super().__init__(optim)
        self.linear = nn.Linear(64, 10)

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.linear(x.flatten(1))
        loss = nn.functional.cross_entropy(logits, y)
        error_rate = (logits.argmax(dim=1) != y).float().mean()
        self.log_stage(stage, loss, {"error_rate": error_rate}, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")


class TinyDivergingRegression(TinySoftmaxRegression):
    """TinySoftmaxRegression whose training loss turns NaN once ``nan_from_step`` optimiser steps are done,
    as a diverging run's does, at a step the test knows."""

    def __init__(self, nan_from_step: int, optim: OptimizerPreset | None = None):
        super().__init__(optim)
        self.nan_from_step = nan_from_step

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= self.nan_from_step else loss
