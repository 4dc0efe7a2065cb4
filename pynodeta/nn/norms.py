"""The normalisation family behind one factory, all with the time-aware ``forward(t, x)``.

Layers that ignore t still take it, so a model swaps TA-BN for a baseline with one option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .stat_updates import stat_updates_allowed
from .tabn import TABatchNorm1d, TABatchNorm2d

__all__ = [
    "NORM_KINDS",
    "make_norm",
    "group_count",
    "PopTIBatchNorm1d",
    "PopTIBatchNorm2d",
    "MiniBatchNorm1d",
    "MiniBatchNorm2d",
    "TimeGroupNorm",
    "TimeInstanceNorm1d",
    "TimeInstanceNorm2d",
    "TimeIdentity",
]

NORM_KINDS = ("tabn", "popti-bn", "minibatch-bn", "gn", "ln", "in", "none")

# Keyword options that make_norm passes on, per kind (anything else is a typo and raises).
_KIND_OPTIONS = {
    "tabn": {"M", "T", "t_min", "t_max", "momentum", "outside", "update_stats_in_backward", "sync_stats", "reg_weight"},
    "popti-bn": {"momentum", "update_stats_in_backward"},
}


class _PopTIMixin:
    """Pop-TI BN: ordinary BatchNorm inside the ODE function, one running (µ, σ²) pair for all times."""

    time_aware = True

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:  # t is ignored: one pair for all times
        if self.training and not stat_updates_allowed(self.update_stats_in_backward):
            # Same kernel and saved tensors as an updating call (so checkpoint recomputation
            # matches), writing into copies of the running statistics that are then dropped.
            self._check_input_dim(x)
            return F.batch_norm(x, self.running_mean.clone(), self.running_var.clone(), self.weight,
                                self.bias, True, self.momentum, self.eps)
        return super().forward(x)


class PopTIBatchNorm1d(_PopTIMixin, nn.BatchNorm1d):
    """Pop-TI BN for x: (batch, C) or (batch, C, L); forward(t, x) ignores t.

    update_stats_in_backward: as in TA-BN, whether calls during a backward (adjoint) solve update
    the running statistics (see ``pynodeta.nn.stat_updates``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 update_stats_in_backward: bool = False):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        self.update_stats_in_backward = update_stats_in_backward


class PopTIBatchNorm2d(_PopTIMixin, nn.BatchNorm2d):
    """Pop-TI BN for x: (batch, C, H, W); forward(t, x) ignores t. See PopTIBatchNorm1d."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 update_stats_in_backward: bool = False):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        self.update_stats_in_backward = update_stats_in_backward


class _IgnoreTimeMixin:
    time_aware = True

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:  # t is taken and ignored
        return super().forward(x)


class MiniBatchNorm1d(_IgnoreTimeMixin, nn.BatchNorm1d):
    """Mini-batch BN: batch statistics at train *and* test time, no running statistics; x: (batch, C[, L])."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=False)


class MiniBatchNorm2d(_IgnoreTimeMixin, nn.BatchNorm2d):
    """Mini-batch BN: batch statistics at train *and* test time, no running stats; x: (batch, C, H, W)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=False)


class TimeGroupNorm(_IgnoreTimeMixin, nn.GroupNorm):
    """``nn.GroupNorm`` with forward(t, x); G = C is instance norm, G = 1 layer norm over (C, *spatial)."""


class _BatchedInstanceNormMixin:
    """Instance norm of batched inputs only. torch's InstanceNorm also takes one sample without its batch axis
    ((C, L), (C, H, W)), so it reads a batch with one axis fewer as a single sample: a (batch, C) input raises
    an error about C, or, where batch == C, is normalised per sample over its channels."""

    batched_shape: tuple[str, ...]

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() == len(self.batched_shape):
            return
        expected = f"instance norm needs x of shape ({', '.join(self.batched_shape)}), got {tuple(x.shape)}"
        if x.dim() == 2:  # a (batch, features) layer's output
            raise ValueError(f"{expected}: a (batch, C) input holds one value per channel and sample, which "
                             "instance norm would map to its bias alone; for (batch, features) layers (the mlp "
                             "backbone's) use norm 'ln' or 'gn'")
        raise ValueError(expected)


class TimeInstanceNorm1d(_IgnoreTimeMixin, _BatchedInstanceNormMixin, nn.InstanceNorm1d):
    """``nn.InstanceNorm1d`` with forward(t, x); x: (batch, C, L) (a (batch, C) input is refused)."""

    batched_shape = ("batch", "C", "L")


class TimeInstanceNorm2d(_IgnoreTimeMixin, _BatchedInstanceNormMixin, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` with forward(t, x); x: (batch, C, H, W)."""

    batched_shape = ("batch", "C", "H", "W")


class TimeIdentity(_IgnoreTimeMixin, nn.Identity):
    """No normalisation; forward(t, x) returns x."""


def group_count(num_channels: int, groups: int | str) -> int:
    """The GroupNorm group count of a layer of ``num_channels`` channels; pynodeta's one rule.

    ``groups="auto"``: Score-SDE's G = min(C // 4, 32) where it divides C (every width that is a
    multiple of 4 up to 128, and of 32 above); otherwise the largest divisor of C not above it
    (1 for C < 4), so that backbones whose layers narrow to the image's 1 or 3 channels stay valid.
    ``groups="channels"``: G = C, instance normalisation with a per-channel affine, which removes any
    per-channel time offset (the vanishing timestep embedding of Kim et al. 2024); for reproducing that effect.
    An int is the group count itself and must divide C: an explicit choice is never changed.
    """
    if groups == "channels":
        return num_channels
    if groups == "auto":
        bound = max(1, min(num_channels // 4, 32))
        return max(g for g in range(1, bound + 1) if num_channels % g == 0)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, 'auto' or 'channels', got {groups!r}")
    if num_channels % groups:
        raise ValueError(
            f"groups={groups} does not divide a layer's num_channels={num_channels}; pass a divisor of "
            f"{num_channels}, or groups='auto' (the largest divisor of each width not above min(C/4, 32))")
    return groups


def make_norm(
    kind: str,
    num_channels: int,
    *,
    dims: int = 2,            # 2: x is (batch, C, H, W); 1: x is (batch, C) or (batch, C, L) ("in": the latter)
    groups: int | str | None = None,  # kind="gn" only: an int dividing C, or "auto" (see group_count)
    eps: float = 1e-5,
    affine: bool = True,
    **options,                # kind-specific: TA-BN (M, T or t_min/t_max, momentum, outside,
                              # update_stats_in_backward, sync_stats, reg_weight),
                              # Pop-TI BN (momentum, update_stats_in_backward)
) -> nn.Module:
    """One normalisation layer by name; every result has forward(t, x).

    kinds: "tabn" (TA-BN), "popti-bn" (one running pair for all times), "minibatch-bn" (batch
    statistics at train and test), "gn" (GroupNorm with ``groups``), "ln" (GroupNorm(1, C): layer
    norm over channels and space with per-channel affine), "in" (instance norm with affine; it needs a
    spatial or length axis, so with dims=1 it takes (batch, C, L) and refuses (batch, C)), "none" (identity).
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; valid kinds: {', '.join(NORM_KINDS)}")
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    if groups is not None and kind != "gn":
        raise ValueError(f"groups only applies to kind='gn', got groups={groups!r} with kind={kind!r}")
    allowed = _KIND_OPTIONS.get(kind, set())
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"options {sorted(unknown)} do not apply to kind={kind!r}; it accepts {sorted(allowed)}")
    if kind == "tabn":
        cls = TABatchNorm2d if dims == 2 else TABatchNorm1d
        return cls(num_channels, eps=eps, affine=affine, **options)
    if kind == "popti-bn":
        cls = PopTIBatchNorm2d if dims == 2 else PopTIBatchNorm1d
        return cls(num_channels, eps=eps, affine=affine, **options)
    if kind == "minibatch-bn":
        return (MiniBatchNorm2d if dims == 2 else MiniBatchNorm1d)(num_channels, eps=eps, affine=affine)
    if kind == "gn":
        if groups is None:
            raise ValueError("kind='gn' needs groups: an int dividing num_channels, or 'auto' (see group_count)")
        return TimeGroupNorm(group_count(num_channels, groups), num_channels, eps=eps, affine=affine)
    if kind == "ln":
        return TimeGroupNorm(1, num_channels, eps=eps, affine=affine)
    if kind == "in":
        return (TimeInstanceNorm2d if dims == 2 else TimeInstanceNorm1d)(num_channels, eps=eps, affine=affine)
    return TimeIdentity()
