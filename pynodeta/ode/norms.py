"""Norms used by adaptive step-size control.

The error ratio of a step is ``norm(error / (atol + rtol * max(|y0|, |y1|)))``. For a single tensor this
is the RMS over every element (batch included, as in torchdiffeq); for a state made of several
tensors (a tuple, or the adjoint's augmented state) it is the *mixed* norm: the largest per-part RMS.
A seminorm leaves some parts out of the error control (the adjoint's parameter gradients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["StateNorm", "rms_norm"]


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over all elements: the default norm of a single-tensor state."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


class StateNorm:
    """Mixed RMS norm over a flat vector made of consecutive parts.

    Args:
        sizes: number of elements of each part, in order; they must add up to the vector's length.
        include: per part, whether it counts (False parts are ignored: a seminorm). Defaults to all.
    """

    def __init__(self, sizes: Sequence[int], include: Sequence[bool] | None = None):
        self.sizes = tuple(int(s) for s in sizes)
        self.include = tuple(include) if include is not None else (True,) * len(self.sizes)
        if len(self.include) != len(self.sizes):
            raise ValueError(f"include has {len(self.include)} entries for {len(self.sizes)} parts")
        if not any(s > 0 and inc for s, inc in zip(self.sizes, self.include)):
            raise ValueError("a StateNorm needs at least one non-empty part that counts")
        self._index_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def is_plain_rms(self) -> bool:
        return len(self.sizes) == 1 and self.include[0]

    def _index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cached = self._index_cache.get(device)
        if cached is None:
            counted = [i for i, (s, inc) in enumerate(zip(self.sizes, self.include)) if inc and s > 0]
            part_of_element = torch.repeat_interleave(
                torch.arange(len(self.sizes), device=device), torch.tensor(self.sizes, device=device)
            )
            sizes = torch.tensor(self.sizes, device=device, dtype=torch.float64).clamp_min(1.0)
            cached = (part_of_element, sizes, torch.tensor(counted, device=device))
            self._index_cache[device] = cached
        return cached

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_plain_rms:
            return rms_norm(x)
        flat = x.reshape(-1)
        part_of_element, sizes, counted = self._index(flat.device)
        sums = torch.zeros(len(self.sizes), dtype=flat.dtype, device=flat.device)
        sums.index_add_(0, part_of_element, flat.square())
        means = sums / sizes.to(flat.dtype)
        return means.index_select(0, counted).max().sqrt()
