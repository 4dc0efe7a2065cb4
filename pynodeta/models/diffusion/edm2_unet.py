"""The EDM2 U-Net (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", config G; numerics as NVlabs/edm2 networks_edm2.py) with pynodeta's forward(t, x).

No normalisation layers and no biases: every layer is magnitude-preserving (``pynodeta.nn.mp``),
encoder blocks pixel-normalise their input, residual and attention branches are merged with
mp_sum(·, 0.3), skips with mp_cat, and learned gains start at 0 (embedding modulation, output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pynodeta.nn.mp import SILU_RMS, MPConv, MPFourier, mp_cat, mp_silu, mp_sum, mp_sum_weights, normalize, resample
from pynodeta.nn.precision import at_least_float32, autocast_off
from pynodeta.ode.backends.graphed_step import capturing

__all__ = ["EDM2Block", "EDM2UNet"]


def _clip(x: torch.Tensor, limit: float) -> torch.Tensor:
    """x.clip(−limit, limit), value and gradient, without the clip where nothing needs it.

    The activations are almost never beyond ±limit, where clip is the identity and so is its gradient; but
    autograd's clamp backward makes four passes over x. On the CPU one aminmax pass tells whether anything
    is beyond ±limit (or NaN: comparisons with NaN are false, so the clip runs); on a GPU the same check
    would wait for the device, so there the clip always runs. So it does under torch.compile, where the
    data-dependent branch would break the graph and the compiler fuses the clip with its neighbours, and
    while a solver's step is recorded as a graph (``capturing()``), where nothing may be read back."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling() and not capturing():
        low, high = torch.aminmax(x.detach())
        if low >= -limit and high <= limit:
            return x
    return x.clip(-limit, limit)


class EDM2Block(nn.Module):
    """Encoder ('enc') or decoder ('dec') residual block with optional self-attention.
    x: (batch, in_channels, H, W), emb: (batch, emb_channels) → (batch, out_channels, H', W')."""

    def __init__(
        self,
        in_channels: int,               # input channels
        out_channels: int,              # output channels
        emb_channels: int,              # embedding channels (noise + class)
        flavor: str = "enc",            # 'enc': skip conv and pixel norm on the main path first; 'dec': at the merge
        resample_mode: str = "keep",    # 'keep', 'down' or 'up' (2×) before anything else
        attention: bool = False,        # self-attention after the residual merge
        channels_per_head: int = 64,    # attention head width
        dropout: float = 0.0,           # dropout in the residual branch
        res_balance: float = 0.3,       # mp_sum blend of main path (0) and residual branch (1)
        attn_balance: float = 0.3,      # mp_sum blend of main path (0) and attention (1)
        clip_act: float | None = 256,   # clip the output to ±clip_act; None: no clipping
    ):
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"flavor must be 'enc' or 'dec', got {flavor!r}")
        self.out_channels, self.flavor, self.resample_mode = out_channels, flavor, resample_mode
        # The released code has out_channels // channels_per_head heads, i.e. none (silently no attention)
        # below 64 channels; we keep at least one head so that small networks get the attention they ask for.
        self.num_heads = max(out_channels // channels_per_head, 1) if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=(3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=())
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=(3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, kernel=(1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=(1, 1)) if attention else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=(1, 1)) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # A decoder block's first conv sees mp_silu(up(x)) = up(mp_silu(x)) (nearest upsampling commutes with
        # element-wise ops), so it runs at x's resolution on the phases of its kernel: ~half the multiplies
        upsample_in_conv = self.resample_mode == "up" and self.flavor == "dec"
        before_resample = x
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm keeps the main path at unit magnitude (paper Sec. 2.3)
        # Residual branch, modulated by the embedding: c = 1 + gain · linear(emb), gain starts at 0. The
        # constant factors of mp_silu (1/0.596) and of mp_sum (the branch's weight) in front of a conv scale its
        # small weight instead of the activations (a conv is linear): two passes over the activations fewer.
        main, branch = mp_sum_weights(self.res_balance)
        y = self.conv_res0(F.silu(before_resample if upsample_in_conv else x), gain=1 / SILU_RMS,
                           upsample=upsample_in_conv)  # conv_res0(mp_silu(x))
        with autocast_off(emb):  # float32 like emb, cast to the activations' dtype after (networks_edm2.py Block)
            scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = F.silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout != 0:
            y = nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y, gain=branch / SILU_RMS)  # branch · conv_res1(mp_silu(y))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = torch.add(y, x, alpha=main)  # mp_sum(x, conv_res1(mp_silu(y)), res_balance)
        if self.attn_qkv is not None:
            main, branch = mp_sum_weights(self.attn_balance)
            x = torch.add(self._attention(x, gain=branch), x, alpha=main)  # mp_sum(x, attention(x), attn_balance)
        if self.clip_act is not None:
            x = _clip(x, self.clip_act)
        return x

    def _attention(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        # Cosine attention: q, k, v pixel-normalised per head, so logits are bounded (paper Sec. 2.3).
        y = self.attn_qkv(x)
        y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
        q, k, v = normalize(y, dim=2).unbind(3)
        weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        y = torch.einsum("nhqk,nhck->nhcq", weights, v)
        return self.attn_proj(y.reshape(*x.shape), gain=gain)


class EDM2UNet(nn.Module):
    """F(c_noise, x) of EDM2: x (batch, img_channels, R, R), t = c_noise = ln(σ)/4 per sample (a float,
    0-d or (batch,) tensor), class_labels (batch, label_dim) one-hot/weights or (batch,) integer
    classes → (batch, img_channels, R, R). Wrap it in ``EDM2Precond`` for a denoiser D(x, σ)."""

    def __init__(
        self,
        img_resolution: int,                            # R: input height = width
        img_channels: int,                              # input / output channels
        label_dim: int = 0,                             # number of classes; 0: unconditional
        model_channels: int = 192,                      # base channel count
        channel_mult: tuple[int, ...] = (1, 2, 3, 4),   # channels per resolution level (× model_channels)
        channel_mult_noise: int | None = None,          # Fourier features (× model_channels); None: channel_mult[0]
        channel_mult_emb: int | None = None,            # embedding width (× model_channels); None: max(channel_mult)
        num_blocks: int = 3,                            # residual blocks per level (decoder: one more)
        attn_resolutions: tuple[int, ...] = (16, 8),    # resolutions with self-attention
        label_balance: float = 0.5,                     # mp_sum blend of noise (0) and class (1) embeddings
        concat_balance: float = 0.5,                    # mp_cat share of skip (0) vs main path (1)
        **block_kwargs,                                 # EDM2Block options (dropout, channels_per_head, ...)
    ):
        super().__init__()
        if img_resolution % (1 << (len(channel_mult) - 1)) != 0:
            raise ValueError(f"img_resolution {img_resolution} must be divisible by 2^(len(channel_mult) - 1) = "
                             f"{1 << (len(channel_mult) - 1)}; use fewer levels in channel_mult")
        resolutions = [img_resolution >> level for level in range(len(channel_mult))]
        unknown = [r for r in attn_resolutions if r not in resolutions]
        if unknown:  # a resolution the network never has would silently mean "no attention"
            raise ValueError(f"attn_resolutions {list(unknown)} are not among this U-Net's resolutions "
                             f"{resolutions} (img_resolution {img_resolution} halved per channel_mult level)")
        block_channels = [model_channels * m for m in channel_mult]
        noise_channels = model_channels * (channel_mult_noise or channel_mult[0])
        emb_channels = model_channels * (channel_mult_emb or max(channel_mult))
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))  # the network's output starts at 0: D = c_skip x at init
        self.emb_fourier = MPFourier(noise_channels)
        self.emb_noise = MPConv(noise_channels, emb_channels, kernel=())
        self.emb_label = MPConv(label_dim, emb_channels, kernel=()) if label_dim else None
        self.enc, channels = self._encoder(img_channels, block_channels, emb_channels, num_blocks, attn_resolutions,
                                           block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, width in reversed(list(enumerate(block_channels))):
            res = img_resolution >> level
            if level == len(block_channels) - 1:
                self.dec[f"{res}x{res}_in0"] = EDM2Block(channels, channels, emb_channels, "dec", attention=True,
                                                         **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = EDM2Block(channels, channels, emb_channels, "dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = EDM2Block(channels, channels, emb_channels, "dec", resample_mode="up",
                                                        **block_kwargs)
            for index in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{index}"] = EDM2Block(
                    channels + skips.pop(), width, emb_channels, "dec", attention=res in attn_resolutions,
                    **block_kwargs)
                channels = width
        self.out_conv = MPConv(channels, img_channels, kernel=(3, 3))

    @property
    def time_range(self) -> tuple[float, float]:
        """The span of t = c_noise = ln(σ)/4 over EDM's sampling range σ ∈ [0.002, 80]: what ``EDMPrecond``
        checks a network against and what ``pynodeta diagnose`` audits by default."""
        return math.log(0.002) / 4, math.log(80.0) / 4

    @property
    def in_channels(self) -> int:  # DDPMUNet's names, which DiffusionModule reads (NVlabs' stay the arguments)
        return self.img_channels

    @property
    def image_size(self) -> int:
        return self.img_resolution

    @property
    def num_classes(self) -> int | None:  # DDPMUNet's word for label_dim: None for an unconditional network
        return self.label_dim or None

    def _encoder(self, img_channels, block_channels, emb_channels, num_blocks, attn_resolutions, block_kwargs):
        encoder = nn.ModuleDict()
        channels = img_channels + 1  # a constant-ones channel lets the first conv see the image border
        for level, width in enumerate(block_channels):
            res = self.img_resolution >> level
            if level == 0:
                encoder[f"{res}x{res}_conv"] = MPConv(channels, width, kernel=(3, 3))
                channels = width
            else:
                encoder[f"{res}x{res}_down"] = EDM2Block(channels, channels, emb_channels, "enc",
                                                         resample_mode="down", **block_kwargs)
            for index in range(num_blocks):
                encoder[f"{res}x{res}_block{index}"] = EDM2Block(channels, width, emb_channels, "enc",
                                                                 attention=res in attn_resolutions, **block_kwargs)
                channels = width
        return encoder, channels

    def embedding(self, t, batch: int, class_labels: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """mp_silu(mp_sum(noise embedding, class embedding)): (batch, emb_channels), float32 at least.

        Mixed precision: the embedding stays float32 under autocast, as in NVlabs/edm2, whose Precond.forward
        hands the U-Net float32 noise and class labels and casts only the image input x_in to fp16, so that
        UNet.forward's emb_fourier/emb_noise/emb_label run in float32 (a few vectors per batch: cheap)."""
        with autocast_off(like):
            dtype = at_least_float32(like.dtype)
            c_noise = torch.as_tensor(t, dtype=dtype, device=like.device).reshape(-1).expand(batch)
            emb = self.emb_noise(self.emb_fourier(c_noise))
            if self.emb_label is not None:
                labels = self._labels(class_labels, batch, c_noise)
                emb = mp_sum(emb, self.emb_label(labels * math.sqrt(labels.shape[1])), t=self.label_balance)
            return mp_silu(emb)

    def _labels(self, class_labels, batch, like) -> torch.Tensor:
        if class_labels is None:  # as the released Precond: zeros, i.e. no class information
            return torch.zeros(batch, self.label_dim, dtype=like.dtype, device=like.device)
        if class_labels.ndim == 1 and not class_labels.is_floating_point():
            return nn.functional.one_hot(class_labels.long(), self.label_dim).to(like.dtype)
        if class_labels.shape != (batch, self.label_dim):
            raise ValueError(f"class_labels must be (batch,) integer classes or (batch, label_dim) = "
                             f"({batch}, {self.label_dim}), got {tuple(class_labels.shape)}")
        return class_labels.to(like.dtype)

    def forward(self, t, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            # another size either breaks the skip concatenations or runs with every resolution-dependent
            # choice (attention levels, the bottleneck size) silently shifted
            raise ValueError(f"x must be (batch, {', '.join(map(str, expected))}) for this EDM2UNet "
                             f"(img_resolution={self.img_resolution}), got {tuple(x.shape)}")
        emb = self.embedding(t, x.shape[0], class_labels, x)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)
