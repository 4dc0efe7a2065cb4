"""Batched, seeded image augmentations (no torchvision).

Every transform maps ``x: (batch, channels, height, width)`` to a tensor of the same shape and draws
its randomness per sample from an explicit CPU ``torch.Generator``, so a run is reproducible from a
seed whatever the device or the number of data-loader workers. The parameters follow torchvision's
``RandomHorizontalFlip``, ``RandomCrop(size, padding)`` and ``RandomErasing`` (same sampling rules),
vectorised over the batch so that they run on the GPU after the batch has been transferred.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["Compose", "RandomHorizontalFlip", "RandomCrop", "RandomErasing"]


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, channels, height, width), got {tuple(x.shape)}")


def _uniform(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """U[0, 1) samples drawn on the CPU generator, then moved (keeps results device-independent)."""
    return torch.rand(*shape, generator=generator, dtype=torch.float64).to(device)


def _fill_value(fill: float | Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """A scalar or one value per channel, shaped (1, channels, 1, 1) to broadcast over x."""
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if fill_t.numel() not in (1, x.shape[1]):
        raise ValueError(f"fill must be a scalar or have one value per channel ({x.shape[1]}), got {fill}")
    return fill_t.expand(x.shape[1]).reshape(1, -1, 1, 1)


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for transform in self.transforms:
            x = transform(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_images(x)
        flip = _uniform((x.shape[0],), generator, x.device) < self.p
        return torch.where(flip.reshape(-1, 1, 1, 1), x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomCrop:
    """Pad by ``padding`` on every side with ``fill``, then cut a random window of the original size.

    This is torchvision's ``RandomCrop(size=H, padding=padding)``: each image is shifted by an
    integer offset in [-padding, padding] along each axis, uncovered pixels take ``fill``.
    """

    def __init__(self, padding: int, fill: float | Sequence[float] = 0.0):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding  # pixels added on each side; also the largest shift
        self.fill = fill  # value of uncovered pixels, scalar or per channel (in x's units)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_images(x)
        batch, channels, height, width = x.shape
        p = self.padding
        padded = _fill_value(self.fill, x).expand(batch, channels, height + 2 * p, width + 2 * p).clone()
        padded[:, :, p : p + height, p : p + width] = x
        offsets = (_uniform((2, batch), generator, x.device) * (2 * p + 1)).long()  # top, left
        rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (batch, height)
        cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # (batch, width)
        b = torch.arange(batch, device=x.device).reshape(-1, 1, 1, 1)
        c = torch.arange(channels, device=x.device).reshape(1, -1, 1, 1)
        return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding}, fill={self.fill})"


class RandomErasing:
    """Blank one random rectangle per image with probability ``p`` (Zhong et al. 2020).

    As in torchvision: up to 10 attempts draw an area fraction from ``scale`` and a log-uniform
    aspect ratio from ``ratio``; the first rectangle that fits is filled with ``value``; when none
    fits the image is left unchanged. The TA-BN paper uses scale (0.04, 0.2), ratio (0.5, 2).
    """

    attempts = 10

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.04, 0.2),
        ratio: tuple[float, float] = (0.5, 2.0),
        value: float | Sequence[float] = 0.0,
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < scale[0] <= scale[1] <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < ratio[0] <= ratio[1], got {ratio}")
        self.p = p  # probability that an image is erased at all
        self.scale = scale  # range of the erased area as a fraction of the image
        self.ratio = ratio  # range of the rectangle's height / width
        self.value = value  # fill value, scalar or per channel (in x's units)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_images(x)
        batch, _, height, width = x.shape
        u = _uniform((5, batch, self.attempts), generator, x.device)
        area = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
        h = torch.round(torch.sqrt(area * aspect)).long()
        w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (h < height) & (w < width)
        first = fits.long().argmax(dim=1, keepdim=True)  # first attempt that fits
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
        top = (u[2].gather(1, first)[:, 0] * (height - h + 1)).long()
        left = (u[3].gather(1, first)[:, 0] * (width - w + 1)).long()
        erase = fits.any(dim=1) & (u[4, :, 0] < self.p)
        rows = torch.arange(height, device=x.device).reshape(1, -1, 1)
        cols = torch.arange(width, device=x.device).reshape(1, 1, -1)
        inside = (rows >= top.reshape(-1, 1, 1)) & (rows < (top + h).reshape(-1, 1, 1))
        inside = inside & (cols >= left.reshape(-1, 1, 1)) & (cols < (left + w).reshape(-1, 1, 1))
        mask = (inside & erase.reshape(-1, 1, 1))[:, None]  # (batch, 1, height, width)
        return torch.where(mask, _fill_value(self.value, x), x)

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value})"
