"""A 3×3 convolution of a 2× nearest-upsampled image, computed at the low resolution.

Nearest upsampling repeats each pixel 2×2, so in a 3×3 window of the upsampled image every output pixel
sees only a 2×2 patch of the original, and which taps land on the same original pixel depends only on the
output pixel's phase (its row and column parity). Summing those taps gives four 2×2 kernels, one per
phase; one 2×2 convolution at the low resolution with the four kernels as output channels computes all of
them (the sub-pixel convolution of Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution
Using an Efficient Sub-Pixel Convolutional Neural Network", built here from the 3×3 kernel). It multiplies
16 (H + 1)(W + 1) where the upsampled convolution multiplies 36 · 4HW: 0.69× at 4×4, 0.56× at 8×8,
0.44× in the limit, and it never builds the upsampled input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import autocast_off

__all__ = ["conv3x3_of_upsampled", "interleave_phases", "phase_kernels"]

# _TAPS[p] maps the 3 taps of a kernel row (offsets −1, 0, +1 in the upsampled image) onto the 2 original
# pixels an output of parity p sees: even rows see rows (i − 1, i) as taps (0 | 1 + 2), odd rows (i, i + 1)
# as taps (0 + 1 | 2).
_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)),
         ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, 3, 3) → (4 · out, in, 2, 2): the 2×2 kernel of each output phase (row parity, column parity),
    phase-major. Linear in ``weight``, so gradients flow back to it."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must be a 3×3 convolution kernel (out, in, 3, 3), got {tuple(weight.shape)}")
    taps = torch.tensor(_TAPS, dtype=weight.dtype, device=weight.device)
    with autocast_off(weight):  # the taps sum in the weight's dtype; only the convolution follows autocast
        kernels = torch.einsum("apy,oiyx,bqx->aboipq", taps, weight, taps)
    return kernels.reshape(4 * weight.shape[0], weight.shape[1], 2, 2)


def conv3x3_of_upsampled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` to round-off.

    x: (batch, in, H, W), weight: (out, in, 3, 3), bias: (out,) or None → (batch, out, 2H, 2W)."""
    batch, _, height, width = x.shape
    out = weight.shape[0]
    # padding 1 at the low resolution: output (i, j) of the 2×2 convolution sees original rows (i − 1, i) and
    # columns (j − 1, j); even output rows use position i, odd ones i + 1, and the zero border of the
    # upsampled image is the zero border here
    y = F.conv2d(x, phase_kernels(weight), None if bias is None else bias.repeat(4), padding=1)
    return interleave_phases(y.view(batch, 2, 2, out, height + 1, width + 1))


def interleave_phases(y: torch.Tensor) -> torch.Tensor:
    """(batch, 2, 2, out, H + 1, W + 1) phase outputs → (batch, out, 2H, 2W): output pixel (2i + a, 2j + b) is
    phase (a, b)'s pixel (i + a, j + b).

    One strided view and one copy: moving to the next row phase a also moves one row down, so a's stride is
    the phase stride plus the row stride (and likewise for b), and every output pixel is read exactly once."""
    batch, _, _, out, rows, cols = y.shape
    y = y.contiguous()  # the strides below are a contiguous tensor's (no copy when it already is)
    s_batch, s_a, s_b, s_out, s_row, s_col = y.stride()
    view = y.as_strided((batch, out, rows - 1, 2, cols - 1, 2),
                        (s_batch, s_out, s_row, s_a + s_row, s_col, s_b + s_col))
    return view.reshape(batch, out, 2 * (rows - 1), 2 * (cols - 1))
