"""Magnitude-preserving layers of EDM2 (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", Sec. 2 and App. B; numerics as in NVlabs/edm2 networks_edm2.py).

Each op keeps unit-variance inputs at unit variance. Shapes: images (batch, channels, height, width),
vectors (batch, channels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .precision import at_least_float32
from .upsample_conv import conv3x3_of_upsampled

__all__ = ["SILU_RMS", "MPConv", "MPFourier", "mp_cat", "mp_silu", "mp_sum", "mp_sum_weights", "normalize", "resample"]

SILU_RMS = 0.596  # E[silu(z)²]^½ for z ~ N(0, 1)


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + RMS(x)) over ``dim`` (default: all dims but 0; dim=1 is pixel norm).

    The released code adds eps to the RMS (not inside the square root); we follow it."""
    dims = tuple(range(1, x.ndim)) if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
    # the norm accumulates in float32 whatever x's dtype, and x is divided in its own dtype (NVlabs/edm2
    # networks_edm2.py normalize: vector_norm(..., dtype=torch.float32), then x / norm.to(x.dtype)); float64 stays
    accumulate = at_least_float32(x.dtype)
    norm = _l2_norm(x, dims, accumulate)
    scale = math.sqrt(norm.numel() / x.numel())
    if torch.compiler.is_compiling():
        # torch 2.13 compiles torch.add's alpha as a symbolic float with dynamic shapes into a backward that
        # loses it (the gradient through a normalised weight came out √N times too small); a product does not
        norm = norm * scale + eps
    else:
        norm = torch.add(eps, norm, alpha=scale)  # eps + ‖x‖/√N, in one pass
    return x / norm.to(x.dtype)


def _l2_norm(x: torch.Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """‖x‖₂ over ``dims`` (kept as size 1), accumulated in ``dtype``: torch.linalg.vector_norm's value and
    gradient (0 at a zero vector) up to round-off.

    On the CPU vector_norm reduces dims that are not the innermost ones (the pixel norm's channels, the
    attention's per-head channels) about 15× slower than a sum of squares does (1 ms against 60 µs for a
    128×32×8×8 pixel norm), so only a reduction over the trailing dims (the weight rows) keeps it."""
    dims = tuple(sorted(d % x.ndim for d in dims))
    if dims == tuple(range(x.ndim - len(dims), x.ndim)):
        return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=dtype)
    squares = x.to(dtype).square().sum(dims, keepdim=True)
    zero = squares == 0  # sqrt's gradient is infinite at 0; vector_norm's gradient there is 0
    return squares.masked_fill(zero, 1).sqrt().masked_fill(zero, 0)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """silu(x) / 0.596, where 0.596 = E[silu(z)²]^½ for z ~ N(0, 1) (paper Eq. 81)."""
    return F.silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """((1 − t) a + t b) / √((1 − t)² + t²): a blend of a (t = 0) and b (t = 1) (paper Eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_sum_weights(t: float) -> tuple[float, float]:
    """mp_sum's coefficients of a and of b: (1 − t, t) / √((1 − t)² + t²). Where b comes out of an MPConv,
    b's coefficient can scale the layer's weight (``gain``) instead of the activations."""
    norm = math.sqrt((1 - t) ** 2 + t ** 2)
    return (1 - t) / norm, t / norm


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation along ``dim`` with a's share (1 − t) and b's share t of the output magnitude:
    C = √((Na + Nb)/((1 − t)² + t²)), [a · C(1 − t)/√Na, b · C t/√Nb]."""
    size_a, size_b = a.shape[dim], b.shape[dim]
    scale = math.sqrt((size_a + size_b) / ((1 - t) ** 2 + t ** 2))
    weight_a, weight_b = scale * (1 - t) / math.sqrt(size_a), scale * t / math.sqrt(size_b)
    shape, other = list(a.shape), list(b.shape)
    shape[dim] = other[dim] = size_a + size_b
    needs_grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    if needs_grad or a.dtype != b.dtype or a.device != b.device or shape != other:  # torch.cat promotes or names it
        return torch.cat([a * weight_a, b * weight_b], dim=dim)
    # Without autograd the scaled halves are written straight into the output: one pass over the
    # activations fewer than scaling, then concatenating (the same values, bit for bit)
    out = a.new_empty(shape)
    torch.mul(a, weight_a, out=out.narrow(dim, 0, size_a))
    torch.mul(b, weight_b, out=out.narrow(dim, size_a, size_b))
    return out


def resample(x: torch.Tensor, mode: str = "keep") -> torch.Tensor:
    """2× down (2×2 box filter, stride 2) or up (nearest) per channel; 'keep' returns x.

    As the released code's [1, 1] filter: a depthwise convolution with the normalised 2×2 box down (average
    pooling's values) and a depthwise transposed convolution with 4 × that box up (nearest-neighbour
    upsampling's values); on the CPU both run 2-3× faster than avg_pool2d and interpolate."""
    if mode == "keep":
        return x
    if mode not in ("down", "up"):
        raise ValueError(f"resample mode must be 'keep', 'down' or 'up', got {mode!r}")
    channels = x.shape[1]
    box = torch.full((channels, 1, 2, 2), 0.25 if mode == "down" else 1.0, dtype=x.dtype, device=x.device)
    if mode == "down":
        return F.conv2d(x, box, stride=2, groups=channels)
    return F.conv_transpose2d(x, box, stride=2, groups=channels)


class MPFourier(nn.Module):
    """Fourier features √2 cos(2π(f x + φ)) with fixed f ~ N(0, bandwidth²), φ ~ U(0, 1): x (batch,) →
    (batch, num_channels), unit RMS for any x."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cos of large phases needs float32 (NVlabs/edm2 MPFourier.forward: x.to(torch.float32), back to x.dtype)
        y = x.to(torch.float32).reshape(-1).outer(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Linear (kernel=()) or 2-D convolution (kernel=(k, k), 'same' padding) without bias whose weight
    rows are used at unit norm: w = gain · normalize(W) / √fan_in (paper Eq. 47).

    Forced weight normalisation (Eq. 66): in training mode the stored W is first overwritten by normalize(W)
    (no grad), so the raw weights cannot grow; in eval mode W is never modified, which keeps EMA
    copies exactly as averaged. As in the released code the overwrite is an in-place update that
    autograd tracks: in training mode call each layer once per forward/backward pass (a second call
    before backward makes backward fail with a clear in-place error instead of silently using the
    renormalised weight).

    Where a call neither renormalises W nor needs a gradient through w (eval mode under ``torch.no_grad``,
    or frozen weights), w is computed once and reused until W or a tensor gain may have changed. It is
    recomputed after:

    - an in-place change that autograd counts (``load_state_dict``, ``copy_`` under no_grad, a for-loop or
      foreach optimiser step) or a new tensor (``.to()``, ``param.data = ...``);
    - any step of a ``torch.optim`` optimiser (fused ones, ``Adam(fused=True)``, write W without autograd's
      count, so every such step in the process drops every cached w);
    - any call that cannot reuse w (one that renormalises W or needs a gradient through w), so an update
      that follows a backward pass by other means (``p.data.add_`` in a hand-written loop) is seen too.

    Not seen: a write that autograd does not count (through ``weight.data``, or a fused kernel called
    outside ``torch.optim``) made after w was cached, with no ``torch.optim`` step and no call that cannot
    reuse w in between. The cached copy takes as much memory as the weight (in the input's dtype)."""

    WEIGHT_NORMS = ("forced", "standard", "none")
    _cache: tuple | None = None  # (key, w, tensors kept alive so that their addresses stay theirs)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, ...] = (),   # () linear, (k, k) convolution
        weight_norm: str = "forced",    # EDM2; "standard": normalise only in forward; "none": W/√fan_in (ablations)
    ):
        super().__init__()
        if len(kernel) not in (0, 2):
            raise ValueError(f"kernel must be () for a linear layer or (k, k) for a convolution, got {kernel}")
        if weight_norm not in self.WEIGHT_NORMS:
            raise ValueError(f"weight_norm must be one of {self.WEIGHT_NORMS}, got {weight_norm!r}")
        self.in_channels, self.out_channels, self.weight_norm = in_channels, out_channels, weight_norm
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0, upsample: bool = False) -> torch.Tensor:
        """upsample: convolve x upsampled 2× (nearest), ``resample(x, 'up')``, computed at x's resolution
        (3×3 kernels only; ``pynodeta.nn.upsample_conv``)."""
        w = self._weight(gain, x.dtype)
        if upsample:
            if tuple(w.shape[2:]) != (3, 3):
                raise ValueError(f"upsample=True needs a 3×3 convolution, this MPConv has kernel "
                                 f"{tuple(w.shape[2:])}; upsample x with resample(x, 'up') first")
            return conv3x3_of_upsampled(x, w)
        if w.ndim == 2:
            return x @ w.t()
        if w.shape[2:] == (1, 1) and x.ndim == 4 and x.device.type == "cpu" and not torch.is_grad_enabled():
            # A 1×1 convolution is a matrix product per image: (out, in) @ (in, H·W) batched over the images,
            # the same sums. On the CPU it ran a digits U-Net's eval call ~2 % faster than the convolution
            # kernel, but its backward made a training step ~3 % slower, so only calls without autograd take it
            # (GPUs, where it was not measured, keep the convolution)
            batch, _, height, width = x.shape
            return torch.matmul(w[:, :, 0, 0], x.flatten(2)).view(batch, -1, height, width)
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))

    def _weight(self, gain: float | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The weight to apply, from the cache where this call may use it."""
        renormalises = self.training and self.weight_norm == "forced"
        gain_grad = isinstance(gain, torch.Tensor) and gain.requires_grad
        if renormalises or (torch.is_grad_enabled() and (self.weight.requires_grad or gain_grad)):
            # A backward pass through this w is usually followed by an update of W, which need not bump W's
            # version (a fused kernel, a write through .data): a cached w from before it must not outlive it
            self._cache = None
            return self._scaled_weight(gain, dtype)
        key = (_version_key(self.weight), _version_key(gain) if isinstance(gain, torch.Tensor) else gain, dtype,
               self.weight_norm, torch.is_inference_mode_enabled(), _optimiser_steps)
        cache = self._cache  # one read: another thread may replace it meanwhile
        if cache is None or cache[0] != key:
            cache = (key, self._scaled_weight(gain, dtype), (self.weight.detach(), gain))
            self._cache = cache
        return cache[1]

    def _scaled_weight(self, gain: float | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """gain · normalize(W) / √fan_in in ``dtype``, after the forced normalisation of W in training mode."""
        # Mixed precision as NVlabs/edm2 (networks_edm2.py MPConv.forward): the weight is normalised in float32
        # (w = self.weight.to(torch.float32)), the forced normalisation writes float32 values into the float32
        # parameter, and only the scaled weight is cast to the activations' dtype (w.to(x.dtype)) for the
        # matmul/convolution. Under autocast these element-wise ops and the float32 norm are left alone (only
        # the matmul/convolution runs in bf16/fp16), so the weight normalisation stays exact float32 there too.
        w = self.weight.to(at_least_float32(self.weight.dtype))
        if self.training and self.weight_norm == "forced":
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # forced weight normalisation
        if self.weight_norm != "none":
            w = normalize(w)  # standard weight normalisation: the gradient is orthogonal to W
        w = w * (gain / math.sqrt(w[0].numel()))  # unit-norm rows: unit-variance in, unit-variance out
        return w.to(dtype)

    def __getstate__(self) -> dict:  # copies and pickles start without a cache
        return {**super().__getstate__(), "_cache": None}

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel={tuple(self.weight.shape[2:])}"


# How many torch.optim steps this process has taken. Fused optimisers (Adam(fused=True), …) update a
# parameter in place without bumping autograd's version counter, so the version alone cannot tell an
# MPConv that its weight changed; every cached weight's key includes this count instead. A step of an
# optimiser that does not hold the weight only costs the next eval call one renormalisation.
_optimiser_steps = 0


def _count_optimiser_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    global _optimiser_steps
    _optimiser_steps += 1


register_optimizer_step_post_hook(_count_optimiser_step)


def _version_key(tensor: torch.Tensor) -> tuple:
    """What identifies a tensor's values while its storage is held alive: its address, autograd's count of
    in-place changes, and its layout."""
    return (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device, tensor.shape, tensor.stride())
