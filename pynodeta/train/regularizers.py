"""The TA-BN regulariser as a training loss term."""

from __future__ import annotations

import torch
from torch import nn

from pynodeta.nn import TABatchNorm1d, TABatchNorm2d, tabn_regularizer

__all__ = ["tabn_penalty"]


def tabn_penalty(model: nn.Module, weight: float | None = None) -> torch.Tensor:
    """λ·Σ_layers Σ_m [mse(γ*_m, 1) + mse(β*_m, 0)], the TA-BN code's pull of γ/β towards the identity.

    weight: λ for every TA-BN layer; None uses each layer's own ``reg_weight`` (0.1, the paper's
    code, unless the model was built with another). 0 gives an exact zero (no graph).
    A 0-d tensor; 0 when the model has no affine TA-BN layer.
    """
    if weight is None:
        return tabn_regularizer(model)
    if weight < 0:
        raise ValueError(f"the TA-BN regulariser weight must be >= 0 (0 disables it), got {weight}")
    layers = [m for m in model.modules() if isinstance(m, (TABatchNorm1d, TABatchNorm2d)) and m.affine]
    if weight == 0 or not layers:
        return torch.zeros(())
    # mean over channels, sum over grid points: the same term as TABatchNorm*.regularizer()
    terms = [((m.weight - 1.0) ** 2).mean(dim=1).sum() + (m.bias**2).mean(dim=1).sum() for m in layers]
    return weight * torch.stack(terms).sum()
