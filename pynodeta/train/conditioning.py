"""Class labels of a diffusion model's batches: which networks take them, one-hot encoding, label dropout.

The convention is NVlabs EDM2's: a network gets labels one-hot, (batch, num_classes) float, and an all-zero
row means "no class" — the unconditional model that classifier-free guidance extrapolates away from.
Label dropout in training zeroes a random fraction of the rows, so one network learns both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassConditioning", "network_num_classes", "one_hot_labels"]


def network_num_classes(model: nn.Module) -> int | None:
    """Classes a network is conditioned on (its ``num_classes``: ``DDPMUNet``'s argument, ``EDM2UNet``'s
    ``label_dim``), None when it has none."""
    value = getattr(model, "num_classes", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def one_hot_labels(labels: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """Integer labels (batch,) in [0, num_classes) as one-hot rows in ``like``'s dtype and device."""
    if labels.dtype.is_floating_point or labels.ndim != 1:
        raise ValueError(f"labels must be integer classes of shape (batch,), got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) (the network's classes), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels.long(), num_classes).to(dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class ClassConditioning:
    """How a ``DiffusionModule`` hands labels to its network: ``num_classes`` None for an unconditional one."""

    num_classes: int | None
    label_dropout: float = 0.0

    @classmethod
    def of(cls, model: nn.Module, label_dropout: float) -> ClassConditioning:
        if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)) or not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be a number in [0, 1) (the fraction of labels dropped for "
                             f"classifier-free guidance; EDM2 and Ho & Salimans use 0.1), got {label_dropout!r}")
        num_classes = network_num_classes(model)
        if label_dropout and num_classes is None:
            raise ValueError(f"label_dropout={label_dropout} needs a class-conditional network, but "
                             f"{type(model).__name__} has no classes: build it with num_classes=… (DDPMUNet) or "
                             "label_dim=… (EDM2UNet), or leave label_dropout at 0")
        return cls(num_classes, float(label_dropout))

    def split(self, batch, sample_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, one-hot labels or None) of a batch ``x`` or ``(x, labels, ...)``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if x.dim() != 4 or tuple(x.shape[1:]) != sample_shape:
            raise ValueError(f"batches must hold images (batch, {', '.join(map(str, sample_shape))}), "
                             f"got {tuple(x.shape)}")
        if self.num_classes is None:
            return x, None
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"the network is class-conditional ({self.num_classes} classes) but the batches hold no "
                             "labels: use a DataModule whose batches are (images, labels)")
        return x, one_hot_labels(batch[1], self.num_classes, x)

    def drop(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Training: zero each row with probability ``label_dropout`` (the unconditional model)."""
        if labels is None or not self.label_dropout:
            return labels
        keep = torch.rand(labels.shape[0], device=labels.device) >= self.label_dropout
        return labels * keep.to(labels.dtype).unsqueeze(1)
