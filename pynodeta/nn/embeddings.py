"""Additive timestep embeddings: per-channel (linear, sinusoidal + MLP) and positional (H×W)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .time import time_as_tensor

__all__ = [
    "sinusoidal_timestep_embedding",
    "TimestepEmbedding",
    "LinearTimestepEmbedding",
    "SinusoidalTimestepEmbedding",
    "PositionalTimestepEmbedding",
]


def sinusoidal_timestep_embedding(
    t: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    max_period: float = 10000.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Transformer-style sinusoidal embedding, the same numbers as diffusers' ``get_timestep_embedding``.

    frequencies f_i = exp(-ln(max_period) · i / (dim/2 - downscale_freq_shift)), i < dim/2;
    emb = [sin(scale·t·f), cos(scale·t·f)] (cos first if flip_sin_to_cos), zero-padded to odd dim.
    DDPM original: shift 1, no flip; ADM style: shift 0, flip.

    t: (batch,) of any real dtype -> (batch, dim). Integer timesteps (DDPM's) are promoted to float32
    first, as diffusers does: the frequencies must never be cast to an integer type.
    """
    if t.dim() != 1:
        raise ValueError(f"t must be a 1-D (batch,) tensor, got shape {tuple(t.shape)}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    half = dim // 2
    if half - downscale_freq_shift <= 0:
        raise ValueError(
            f"dim // 2 must exceed downscale_freq_shift, got dim={dim}, shift={downscale_freq_shift}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift)).to(t.dtype)
    angles = scale * t[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """The diffusers timestep MLP: linear -> SiLU -> linear.

    forward(emb): (batch, in_features) -> (batch, out_features). Part of the timestep branch.
    """

    timestep_branch = True

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_features)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_features, out_features or hidden_features)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(emb)))


def _expand_time(t, x: torch.Tensor) -> torch.Tensor:
    """A (batch,) time vector from a float, 0-d or (batch,) t."""
    t = time_as_tensor(t, x)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def _per_channel(e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(batch, C) -> broadcastable against x: (batch, C, *spatial)."""
    return e.reshape(*e.shape, *([1] * (x.dim() - 2)))


class LinearTimestepEmbedding(nn.Module):
    """Add ``t·v`` per channel: the offset a concatenated t channel amounts to (Kim et al. 2024, "The
    Disappearance of Timestep Embedding", the ConcatConv equation).

    forward(t, x): t float, 0-d or (batch,); x: (batch, channels, *spatial) -> same shape.
    """

    time_aware = True
    timestep_branch = True

    def __init__(self, num_channels: int, init_std: float = 1.0):
        super().__init__()
        self.v = nn.Parameter(torch.randn(num_channels) * init_std)  # per-channel direction

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        e = _expand_time(t, x)[:, None] * self.v[None, :]
        return x + _per_channel(e, x)


class SinusoidalTimestepEmbedding(nn.Module):
    """Add ``MLP(sinusoid(t))`` per channel, as a DDPM/ADM residual block adds its projected ``temb``.

    forward(t, x): t float, 0-d or (batch,); x: (batch, num_channels, *spatial) -> same shape.
    """

    time_aware = True
    timestep_branch = True

    def __init__(
        self,
        num_channels: int,                  # channels of x; the MLP projects to one offset each
        embedding_dim: int = 64,            # width of the sinusoidal embedding
        hidden_dim: int | None = None,      # MLP width (default 4·embedding_dim, as in DDPM)
        flip_sin_to_cos: bool = False,      # diffusers option (ADM: True)
        downscale_freq_shift: float = 1.0,  # diffusers option (ADM: 0)
        max_period: float = 10000.0,
        scale: float = 1.0,                 # multiply t first (e.g. 1000 for t in [0, 1])
    ):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.sinusoid = dict(flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=downscale_freq_shift,
                             max_period=max_period, scale=scale)
        self.mlp = TimestepEmbedding(embedding_dim, hidden_dim or 4 * embedding_dim, num_channels)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_timestep_embedding(_expand_time(t, x), self.embedding_dim, **self.sinusoid)
        return x + _per_channel(self.mlp(emb), x)


class PositionalTimestepEmbedding(nn.Module):
    """Add an H×W map ``p_t`` shared across channels (the vanishing-embedding paper's fix 1).

    A per-channel normalisation removes per-channel constants but not a spatial pattern, so
    ``p_t`` survives BN/IN/GN. ``mode="linear"``: p_t = t·p with p a learnable (H, W) map;
    ``mode="mlp"``: p_t = MLP(sinusoid(t)) reshaped to (H, W), a parallel timestep branch.

    forward(t, x): t float, 0-d or (batch,); x: (batch, channels, height, width) -> same shape.
    """

    time_aware = True
    timestep_branch = True

    def __init__(
        self,
        height: int,
        width: int,
        mode: Literal["linear", "mlp"] = "linear",
        embedding_dim: int = 64,            # mode="mlp": width of the sinusoidal embedding
        hidden_dim: int | None = None,      # mode="mlp": MLP width (default 4·embedding_dim)
        init_std: float = 1.0,              # mode="linear": std of the initial map p
        **sinusoid_options,                 # mode="mlp": sinusoidal_timestep_embedding's options
    ):
        super().__init__()
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be >= 1, got {height}, {width}")
        if mode not in ("linear", "mlp"):
            raise ValueError(f"mode must be 'linear' or 'mlp', got {mode!r}")
        if mode == "linear" and sinusoid_options:
            raise ValueError(f"sinusoid options {sorted(sinusoid_options)} only apply to mode='mlp'")
        self.height, self.width, self.mode = height, width, mode
        if mode == "linear":
            self.p = nn.Parameter(torch.randn(height, width) * init_std)
        else:
            self.embedding_dim = embedding_dim
            self.sinusoid = sinusoid_options
            self.mlp = TimestepEmbedding(embedding_dim, hidden_dim or 4 * embedding_dim, height * width)

    def embedding(self, t, x: torch.Tensor) -> torch.Tensor:
        """p_t: (batch, 1, height, width)."""
        tb = _expand_time(t, x)
        if self.mode == "linear":
            return tb[:, None, None, None] * self.p[None, None]
        emb = sinusoidal_timestep_embedding(tb, self.embedding_dim, **self.sinusoid)
        return self.mlp(emb).reshape(-1, 1, self.height, self.width)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"x must be (batch, channels, {self.height}, {self.width}), got {tuple(x.shape)}"
            )
        return x + self.embedding(t, x)
