"""The TA-BN paper's "unmixed" neural-ODE classifiers: the ODE state is the input itself.

x -> [lift] -> ODE block with a derivative backbone -> flatten -> BatchNorm -> Dropout(0.5) -> Linear.
Variants (TA-BN paper, Table 3): "node" (plain), "augnode" (zero channels appended), "hbnode"
(heavy ball, state (h, m)), "sonode" (second order, state (x, v)); the head reads h / x.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...ode import SolverSettings
from ..common import check_in_shape
from .augnode import ZeroAugment
from .backbones import build_backbone
from .hbnode import HeavyBallField
from .ode_block import ODEBlock, check_t_span
from .sonode import SecondOrderField
from .velocity import WithInitialVelocity

__all__ = ["VARIANTS", "UnmixedClassifier", "build_unmixed_classifier"]

VARIANTS = ("node", "augnode", "hbnode", "sonode")


class UnmixedClassifier(nn.Module):
    """lift -> ODEBlock(field) -> first part of the state -> flatten -> BatchNorm1d -> Dropout -> Linear.

    forward(x): x (batch, *in_shape) -> logits (batch, num_classes).
    The head's BatchNorm is an ordinary one over the flattened features (it is outside the ODE).
    """

    def __init__(
        self,
        field: nn.Module,                  # the time-aware right-hand side on the lifted state
        in_shape: tuple[int, ...],         # one input's shape
        num_features: int,                 # size of the flattened state part the head reads
        num_classes: int,
        lift: nn.Module | None = None,     # x -> initial state (default: the identity)
        t_span: tuple[float, float] = (0.0, 1.0),
        solver: SolverSettings | None = None,
        dropout: float = 0.5,              # the paper's 0.5
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_shape = tuple(in_shape)
        self.lift = lift if lift is not None else nn.Identity()
        self.ode = ODEBlock(field, t_span, solver)
        self.head = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(num_features), nn.Dropout(dropout),
                                  nn.Linear(num_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"x must be (batch, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        state = self.ode(self.lift(x))
        return self.head(state[0] if isinstance(state, tuple) else state)


def _variant_option(variant: str, name: str, value, owner: str, default):
    if value is not None and variant != owner:
        raise ValueError(f"{name} only applies to variant={owner!r}, got it with variant={variant!r}")
    return default if value is None else value


def build_unmixed_classifier(
    backbone: str,                     # "conv4", "conv6", "conv7+L", "unet18" (image inputs) or "mlp" (flat)
    in_shape: tuple[int, ...],         # (C, H, W), or (features,) for "mlp"
    num_classes: int,
    *,
    variant: str = "node",             # one of VARIANTS
    norm: str = "tabn",                # norm inside the ODE: any of pynodeta.nn.NORM_KINDS
    width: int = 32,                   # conv: first-level channels (paper 32); mlp: hidden units
    extra_layers: int | None = None,   # conv7+L: Lc (default 1)
    depth: int | None = None,          # mlp: linear layers (default 4)
    norm_layers: int | None = None,    # mlp: normalise only the first n layers (default all)
    activation: str = "relu",
    groups: int | str | None = None,   # norm="gn": int dividing every layer's width, or "auto" (default)
    norm_options: Mapping[str, Any] | None = None,  # make_norm options (TA-BN: M, momentum, ...)
    t_span: tuple[float, float] = (0.0, 1.0),
    solver: SolverSettings | None = None,  # method, tolerances, adjoint (default dopri5, 1e-3, adjoint)
    dropout: float = 0.5,
    aug_channels: int | None = None,   # augnode: zero channels appended (default: as many as the input's)
    gamma_logit: float | None = None,  # hbnode: initial θ of the damping γ = sigmoid(θ) (default -3)
    initial_velocity: str | None = None,  # hbnode/sonode: "zero" or "learned" (default hbnode zero, sonode learned)
) -> UnmixedClassifier:
    """An unmixed NODE classifier (or one of its variants) around a named derivative backbone."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    shape = check_in_shape(in_shape, dims=(1,) if backbone == "mlp" else (3,))
    t_span = check_t_span(t_span)
    aug = _variant_option(variant, "aug_channels", aug_channels, "augnode", shape[0])
    gamma = _variant_option(variant, "gamma_logit", gamma_logit, "hbnode", -3.0)
    if initial_velocity is not None and variant not in ("hbnode", "sonode"):
        raise ValueError(f"initial_velocity only applies to variants 'hbnode' and 'sonode', got variant={variant!r}")
    velocity = initial_velocity or ("learned" if variant == "sonode" else "zero")

    def make(state_shape, out_channels=None):
        return build_backbone(backbone, state_shape, out_channels=out_channels, norm=norm, t_span=t_span,
                              width=width, extra_layers=extra_layers, depth=depth, norm_layers=norm_layers,
                              activation=activation, groups=groups, norm_options=norm_options)

    lift, read_shape = None, shape
    if variant == "node":
        field = make(shape)
    elif variant == "augnode":
        read_shape = (shape[0] + aug, *shape[1:])
        field, lift = make(read_shape), ZeroAugment(aug)
    elif variant == "hbnode":
        field, lift = HeavyBallField(make(shape), gamma), WithInitialVelocity(shape, velocity)
    else:
        field = SecondOrderField(make((2 * shape[0], *shape[1:]), out_channels=shape[0]))
        lift = WithInitialVelocity(shape, velocity)
    return UnmixedClassifier(field, shape, int(torch.Size(read_shape).numel()), num_classes, lift=lift,
                             t_span=t_span, solver=solver, dropout=dropout)
