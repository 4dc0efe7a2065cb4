"""What the audit knows about layers by their type: normalisations and where pynodeta injects time.

Anything not listed here is still audited by measurement (see ``audit.py``); the types only add
an explanation and the normalisation units over which statistics are taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from pynodeta.nn import (
    ConcatConv2d,
    ConcatLinear,
    LinearTimestepEmbedding,
    PositionalTimestepEmbedding,
    SinusoidalTimestepEmbedding,
    TABatchNorm,
)

__all__ = [
    "NormalizationUnits",
    "normalization_units",
    "uses_running_statistics",
    "time_entry_description",
    "channel_units",
]

# (times, *shape) -> (times, units, elements per unit)
UnitView = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NormalizationUnits:
    """How a normalisation layer takes its statistics."""

    unit: str                   # one normalisation unit, in words ("channel, over batch and space")
    units: UnitView | None      # the units of an activation stack; None: no mean is subtracted


def channel_units(acts: torch.Tensor) -> torch.Tensor:
    """BatchNorm's units: one per channel, over batch and space. acts: (times, batch, C, *spatial)."""
    k, channels = acts.shape[0], acts.shape[2]
    return acts.movedim(2, 1).reshape(k, channels, -1)


def _instance_units(acts: torch.Tensor) -> torch.Tensor:
    # one unit per (sample, channel), over space; acts: (times, batch, C, *spatial)
    return acts.reshape(acts.shape[0], acts.shape[1] * acts.shape[2], -1)


def _group_units(groups: int) -> UnitView:
    def units(acts: torch.Tensor) -> torch.Tensor:
        # one unit per (sample, group of C/G channels), over those channels and space
        return acts.reshape(acts.shape[0], acts.shape[1] * groups, -1)
    return units


def _layer_units(size: int) -> UnitView:
    def units(acts: torch.Tensor) -> torch.Tensor:
        # one unit per leading index, over the trailing normalized_shape
        return acts.reshape(acts.shape[0], -1, size)
    return units


def normalization_units(module: nn.Module) -> NormalizationUnits | None:
    """How a normalisation layer takes its statistics, None for anything else.

    Known: torch's BatchNorm*/SyncBatchNorm, InstanceNorm*, GroupNorm, LayerNorm, RMSNorm and
    pynodeta's TA-BN, Pop-TI BN, mini-batch BN, TimeGroupNorm and TimeInstanceNorm* (subclasses).
    """
    if isinstance(module, (TABatchNorm, _BatchNorm)):
        return NormalizationUnits("channel, over batch and space", channel_units)
    if isinstance(module, _InstanceNorm):
        return NormalizationUnits("sample and channel, over space", _instance_units)
    if isinstance(module, nn.GroupNorm):
        per_group = module.num_channels // module.num_groups
        unit = f"sample and group of {per_group} channel{'s' if per_group > 1 else ''}"
        return NormalizationUnits(unit, _group_units(module.num_groups))
    if isinstance(module, nn.LayerNorm):
        size = 1
        for n in module.normalized_shape:
            size *= n
        return NormalizationUnits(f"trailing {tuple(module.normalized_shape)}", _layer_units(size))
    if isinstance(module, getattr(nn, "RMSNorm", ())):
        return NormalizationUnits("trailing dims, no mean subtraction", None)
    return None


def uses_running_statistics(module: nn.Module) -> bool:
    """True if the layer normalised with running statistics in its current mode (eval-mode BN)."""
    if isinstance(module, TABatchNorm):
        return not module.training
    if isinstance(module, (_BatchNorm, _InstanceNorm)):
        return not module.training and module.track_running_stats and module.running_mean is not None
    return False


def time_entry_description(module: nn.Module) -> str | None:
    """How a pynodeta layer injects t (Kim et al. 2024, Eqs. 2-6), None if it is not one that does."""
    if isinstance(module, ConcatConv2d):
        conv = module.conv
        if isinstance(conv, nn.ConvTranspose2d):
            return "t·(transposed conv of a constant map): per-channel offset with border/stride pattern"
        if any(p > 0 for p in conv.padding):
            return "Conv([t, x]) = Conv_x(x) + t·v: per-channel offset, plus a zero-padding border term"
        return "Conv([t, x]) = Conv_x(x) + t·v: per-channel offset"
    if isinstance(module, ConcatLinear):
        return "W[t, x] = W_x x + t·w: per-feature offset"
    if isinstance(module, LinearTimestepEmbedding):
        return "x + t·v: per-channel offset"
    if isinstance(module, SinusoidalTimestepEmbedding):
        return "x + MLP(sinusoid(t)): per-channel offset"
    if isinstance(module, PositionalTimestepEmbedding):
        return "x + p_t: an H×W map shared over channels"
    if isinstance(module, TABatchNorm):
        return "affine γ(t), β(t) (and running µ(t), σ²(t) in eval)"
    return None
