"""Classifier-free guidance (Ho & Salimans 2022) in EDM2's convention: D = D_u + w·(D_c − D_u).

w = 1 is the conditional model alone, w = 0 the unconditional one, w > 1 extrapolates away from the
unconditional prediction (sharper classes, less diversity). The unconditional prediction is the same
network with all-zero class labels (a network trained with label dropout), or a separate denoiser
(EDM2's autoguidance uses a smaller, less trained one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._known_sigmas import as_levels, same_levels

__all__ = ["GuidedDenoiser", "check_guidance"]


def check_guidance(guidance: float, name: str = "guidance") -> float:
    """The guidance weight w as a float, refused (naming ``name``) unless a finite number >= 0."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not (
            math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (1: no guidance, 0: unconditional), got {guidance!r}")
    return float(guidance)


class GuidedDenoiser(nn.Module):
    """``denoiser`` guided with weight ``guidance``: ``forward(x, sigma, class_labels)`` → D_u + w·(D_c − D_u).

    Args:
        denoiser: ``denoiser(x, sigma, class_labels=None) -> x̂0`` of a class-conditional network.
        guidance: the weight w >= 0.
        unconditional: the denoiser of D_u, ``unconditional(x, sigma)``; None: ``denoiser`` with zero labels,
            evaluated together with the conditional call in one doubled batch.
    """

    def __init__(self, denoiser: nn.Module, guidance: float, unconditional: nn.Module | None = None):
        super().__init__()
        self.denoiser, self.guidance, self.unconditional = denoiser, check_guidance(guidance), unconditional

    @property
    def sigma_min(self) -> float:
        return self.denoiser.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.denoiser.sigma_max

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if class_labels is None:
            raise ValueError("a guided denoiser needs class_labels (one-hot, (batch, num_classes)): guidance steers "
                             "towards a class; pass extra_args={'class_labels': …} to the sampler")
        if self.guidance == 1:
            return self.denoiser(x, sigma, class_labels=class_labels)
        if self.unconditional is not None:
            conditional = self.denoiser(x, sigma, class_labels=class_labels)
            return torch.lerp(self.unconditional(x, sigma), conditional, self.guidance)
        _check_one_hot(class_labels, x)
        given = as_levels(sigma, x)
        sigma = given.reshape(-1).expand(x.shape[0])
        both = self.denoiser(torch.cat([x, x]), same_levels(given, torch.cat([sigma, sigma])),
                             class_labels=torch.cat([class_labels, torch.zeros_like(class_labels)]))
        conditional, unconditional = both.chunk(2)
        return torch.lerp(unconditional, conditional, self.guidance)


def _check_one_hot(class_labels: torch.Tensor, x: torch.Tensor) -> None:
    """The unconditional half is the same labels zeroed: all-zero one-hot rows mean "no class", but a zeroed
    integer class is class 0, which would guide away from class 0 (and leave class 0 unguided)."""
    if not class_labels.is_floating_point() or class_labels.dim() != 2 or class_labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"guidance with the denoiser's own unconditional prediction needs one-hot class_labels of shape "
            f"(batch={x.shape[0]}, num_classes) and a floating dtype (the unconditional rows are all zero), got "
            f"{class_labels.dtype} of shape {tuple(class_labels.shape)}; pass "
            f"torch.nn.functional.one_hot(classes, num_classes).float()")
