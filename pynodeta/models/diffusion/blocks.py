"""Building blocks of the DDPM/ADM U-Net: residual blocks with a timestep injection, attention, resampling.

Ho et al. 2020 (DDPM, ``diffusion/models/unet.py``) and Dhariwal & Nichol 2021 (ADM,
``guided_diffusion/unet.py``). The residual block carries the options of Kim et al. 2024 (
"The Disappearance of Timestep Embedding"): the normalisation right after the time injection can be
a GroupNorm with any group count or a BatchNorm, and a positional (H×W) timestep embedding can be
added there, which no per-channel normalisation can remove.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pynodeta.nn import PositionalTimestepEmbedding, group_count
from pynodeta.nn.upsample_conv import conv3x3_of_upsampled

__all__ = ["TimeProjection", "DDPMResidualBlock", "AttentionBlock", "Downsample", "Upsample", "UpsampledConv2d",
           "group_norm"]

Injection = Literal["add", "scale_shift"]
PostTimeNorm = Literal["group", "batch"]


def group_norm(channels: int, groups: int | str) -> nn.GroupNorm:
    """GroupNorm over ``channels`` with ``pynodeta.nn.group_count(channels, groups)`` groups: "auto"
    (Score-SDE's min(C/4, 32)), "channels" (G = C, instance norm) or an int dividing ``channels``."""
    return nn.GroupNorm(group_count(channels, groups), channels, eps=1e-6)


class TimeProjection(nn.Module):
    """SiLU → Linear from the shared timestep embedding to a block's offset (and scale).

    Part of the timestep branch: the zero-bias policy of Kim et al. 2024 keeps its default bias.
    forward(emb): (batch, embedding_dim) -> (batch, out_features, 1, 1).
    """

    timestep_branch = True

    def __init__(self, embedding_dim: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(embedding_dim, out_features)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear(F.silu(emb))[:, :, None, None]


class DDPMResidualBlock(nn.Module):
    """DDPM residual block: norm → SiLU → conv, inject time, norm → SiLU → dropout → conv, plus skip.

    Injection "add" (DDPM): h = conv1(...) + proj(temb), then the post-time norm. "scale_shift"
    (ADM's use_scale_shift_norm): h = norm(h)·(1 + s) + b after it, so time enters after the norm.
    ``post_time_norm``: "group" (GroupNorm with ``post_time_groups``) or "batch" (BatchNorm2d). A
    per-channel normalisation there (BatchNorm, or GroupNorm with G = C) cancels an added
    per-channel offset exactly: the vanishing timestep embedding of Kim et al. 2024.
    ``positional_size``: (H, W) to add a positional timestep embedding p_t after the injection.

    forward(x, emb, t): x (batch, in_channels, H, W), emb (batch, embedding_dim), t (batch,) the raw
    times (read only by the positional embedding) -> (batch, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embedding_dim: int,                         # width of the shared timestep embedding
        dropout: float = 0.0,
        groups: int | str = "auto",                 # GroupNorm groups of the first norm (pynodeta.nn.group_count)
        post_time_norm: PostTimeNorm = "group",     # the normalisation right after the time injection
        post_time_groups: int | str = "auto",       # its groups when "group" ("channels": G = C)
        injection: Injection = "add",
        positional_size: tuple[int, int] | None = None,  # (H, W): add a positional embedding p_t
        positional_options: dict | None = None,     # options of PositionalTimestepEmbedding (mode="mlp")
    ):
        super().__init__()
        if injection not in ("add", "scale_shift"):
            raise ValueError(f"injection must be 'add' or 'scale_shift', got {injection!r}")
        if post_time_norm not in ("group", "batch"):
            raise ValueError(f"post_time_norm must be 'group' or 'batch', got {post_time_norm!r}")
        self.injection = injection
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_projection = TimeProjection(embedding_dim, out_channels * (2 if injection == "scale_shift" else 1))
        self.positional = None
        if positional_size is not None:
            self.positional = PositionalTimestepEmbedding(*positional_size, mode="mlp", **(positional_options or {}))
        self.norm2 = (nn.BatchNorm2d(out_channels) if post_time_norm == "batch"
                      else group_norm(out_channels, post_time_groups))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # DDPM/ADM: each block starts as the identity (zero_module)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def time_cancelling_norm(self) -> str | None:
        """Why ``norm2`` removes the added timestep embedding, or None when time survives it.

        It does when time is added ("add") as a per-channel offset with no positional map, and
        ``norm2`` normalises each channel on its own: BatchNorm, or GroupNorm with G = C.
        """
        if self.injection != "add" or self.positional is not None:
            return None
        if isinstance(self.norm2, nn.BatchNorm2d):
            return f"BatchNorm2d({self.norm2.num_features} channels)"
        if self.norm2.num_groups == self.norm2.num_channels:
            return f"GroupNorm({self.norm2.num_groups} groups, {self.norm2.num_channels} channels)"
        return None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        projected = self.time_projection(emb)
        if self.injection == "add":
            h = h + projected
        if self.positional is not None:
            h = self.positional(t, h)
        h = self.norm2(h)
        if self.injection == "scale_shift":
            scale, shift = projected.chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions (DDPM's AttnBlock, ADM's multi-head version), residual.

    forward(x): (batch, channels, H, W) -> same shape.
    """

    def __init__(self, channels: int, groups: int | str = "auto", num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads must divide channels={channels}, got {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity, like the residual blocks
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.num_heads, channels // self.num_heads, height * width)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (batch, heads, positions, head_dim)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(h.transpose(-1, -2).reshape(batch, channels, height, width))


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3×3 conv (DDPM's resamp_with_conv).

    forward(x): (b, C, H, W) -> (b, C, H/2, W/2).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpsampledConv2d(nn.Conv2d):
    """A 3×3 convolution of its input upsampled 2× (nearest): (b, C_in, H, W) -> (b, C_out, 2H, 2W), computed at
    the input's resolution on the phases of the kernel (``pynodeta.nn.upsample_conv``), about half the
    multiplies, and the upsampled input is never built. Weight and bias are a ``Conv2d(C_in, C_out, 3,
    padding=1)``'s, under the same names."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3x3_of_upsampled(x, self.weight, self.bias)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then a 3×3 conv. forward(x): (b, C, H, W) -> (b, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = UpsampledConv2d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

