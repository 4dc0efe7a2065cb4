"""Small models for the diagnose tests: plain-torch time injections and a tiny neural-ODE network."""

from __future__ import annotations

import lightning
import torch
from torch import nn

import pynodeta as pn

from ..tiny_ode_block import TinyODEBlock

RK4_HALF_STEPS = pn.SolverSettings(method="rk4", controller=pn.FixedGrid(step_size=0.5))


class OwnConcatConv(nn.Module):
    """A user's own ConcatConv, written in plain torch: conv over [t·1, x]."""

    def __init__(self, in_channels: int, out_channels: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=padding)

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], dim=1))


class OwnODEFunc(nn.Module):
    """[own concat conv – GroupNorm(1) – ReLU – own concat conv – BatchNorm2d], no pynodeta layers.

    The second concat conv's input already varies with t, so only re-running it at a fixed input
    shows that it injects time.
    """

    def __init__(self, channels: int = 6):
        super().__init__()
        self.conv1 = OwnConcatConv(channels, channels, padding=1)
        self.norm1 = nn.GroupNorm(1, channels)
        self.act = nn.ReLU()
        self.conv2 = OwnConcatConv(channels, channels, padding=0)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, t, x):
        return self.norm2(self.conv2(t, self.act(self.norm1(self.conv1(t, x)))))


class InlineTimeFunc(nn.Module):
    """Time added in the module's own forward code, then InstanceNorm: no submodule injects it."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3)
        self.v = nn.Parameter(torch.randn(channels))
        self.norm = nn.InstanceNorm2d(channels)

    def forward(self, t, x):
        return self.norm(self.conv(x) + t * self.v[:, None, None])


class CountingFunc(nn.Module):
    """ConcatConv – BatchNorm – Dropout with an evaluation counter, to check that audits leave no trace."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = pn.nn.ConcatConv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(0.5)
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        return self.drop(self.norm(self.conv(t, x)))


class TinyNODE(nn.Module):
    """stem conv -> ODE block [time injection – norm – tanh] -> pooled linear head.

    forward(x): (batch, 1, 8, 8) -> (batch, 3).
    """

    def __init__(self, norm: str = "bn", injection: str = "concat", channels: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        if injection == "concat":   # zero padding: a border leak besides the per-channel offset
            layers = [pn.nn.ConcatConv2d(channels, channels, 3, padding=1)]
        else:                       # conv + t·v: an exact per-channel offset
            layers = [nn.Conv2d(channels, channels, 3, padding=1), pn.nn.LinearTimestepEmbedding(channels)]
        norms = {"bn": lambda: nn.BatchNorm2d(channels), "gn": lambda: nn.GroupNorm(1, channels),
                 "tabn": lambda: pn.nn.TABatchNorm2d(channels, M=4)}
        layers.append(norms[norm]())
        self.ode = TinyODEBlock(pn.nn.TimeSequential(*layers, nn.Tanh()), solver=RK4_HALF_STEPS)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3))

    def forward(self, x):
        return self.head(self.ode(self.stem(x)))


class TinyClassifierModule(lightning.LightningModule):
    """A LightningModule holding a TinyNODE in ``.model``, as the training code does."""

    def __init__(self, norm: str = "bn", injection: str = "concat"):
        super().__init__()
        self.save_hyperparameters()
        self.model = TinyNODE(norm, injection)

    def forward(self, x):
        return self.model(x)
