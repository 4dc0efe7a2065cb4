"""The DDPM/ADM U-Net with the timestep-embedding options of Kim et al. 2024, forward(t, x)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pynodeta.nn import TimestepEmbedding, apply_bias_init_policy, sinusoidal_timestep_embedding, time_as_tensor
from pynodeta.nn.time_cancellation import warn_time_cancellation

from .blocks import AttentionBlock, DDPMResidualBlock, Downsample, Injection, PostTimeNorm, Upsample, group_norm

__all__ = ["DDPMUNet"]


class _Stage(nn.Module):
    """One residual block, then attention where the resolution asks for it."""

    def __init__(self, block: DDPMResidualBlock, attention: AttentionBlock | None):
        super().__init__()
        self.block, self.attention = block, attention

    def forward(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = self.block(x, emb, t)
        return x if self.attention is None else self.attention(x)


class DDPMUNet(nn.Module):
    """DDPM (Ho et al. 2020) / ADM (Dhariwal & Nichol 2021) U-Net predicting a tensor of x's shape.

    The timestep reaches every residual block through a sinusoidal embedding (diffusers'
    ``flip_sin_to_cos`` / ``downscale_freq_shift``) → MLP (linear, SiLU, linear) → a per-block
    linear, added to the features (DDPM) or applied as scale-shift after the norm (ADM).
    The three fixes of Kim et al. 2024 ("The Disappearance of Timestep Embedding") are options:
    ``positional_embedding`` (an H×W timestep map added after the injection), ``bias_init="zero_operand"``
    (zero bias in every operand-branch conv/linear, default bias in the timestep branch) and ``norm_groups`` (fewer
    GroupNorm groups: the default "auto" is Score-SDE's min(C/4, 32), ``pynodeta.nn.group_count``;
    1 is the paper's best). ``post_time_norm="batch"``, ``post_time_groups="channels"`` or an int
    equal to a layer's width build the vanishing variant of the reproduction: a per-channel
    normalisation right after the added embedding removes it. Such a network warns on construction
    (``pynodeta.nn.TimeCancellationWarning``), naming the first such layer and the fix.

    Class conditioning (``num_classes``): a bias-free linear map of the one-hot labels is added to
    the timestep embedding, as ADM adds its label embedding; an all-zero row adds nothing, so it is
    the unconditional model (label dropout = zeroing rows, as in NVlabs' EDM2).

    forward(t, x, class_labels=None): t a float, a 0-d tensor or a (batch,) tensor of times (integer
    DDPM timesteps or a continuous noise label such as EDM's ln(σ)/4; multiplied by ``time_scale``
    before the sinusoid); x (batch, in_channels, image_size, image_size); class_labels (batch,
    num_classes) float one-hot rows, or None (all-zero: unconditional) -> (batch, out_channels,
    image_size, image_size).

    Under ``EDMPrecond`` (t = c_noise = ln(σ)/4 ∈ [−1.55, 1.10] for σ ∈ [0.002, 80]) build it with
    ``time_scale=250``: ``time_range`` declares the span of t the embedding is laid out for, and
    ``EDMPrecond`` refuses a network whose range does not fit c_noise.
    """

    time_aware = True

    def __init__(
        self,
        image_size: int = 8,                        # height = width of the inputs
        in_channels: int = 1,
        out_channels: int | None = None,            # default: in_channels
        channels: int = 64,                         # base width; level i has channels·channel_mult[i]
        channel_mult: Sequence[int] = (1, 2),       # one entry per resolution, halved after each but the last
        num_res_blocks: int = 2,                    # residual blocks per level on the way down
        attention_resolutions: Sequence[int] = (4,),  # spatial sizes with self-attention after each block
        num_heads: int = 1,
        dropout: float = 0.1,
        injection: Injection = "add",               # "add" (DDPM) or "scale_shift" (ADM)
        flip_sin_to_cos: bool = False,              # DDPM: False, shift 1; ADM: True, shift 0
        downscale_freq_shift: float = 1.0,
        time_scale: float = 1.0,                    # t is multiplied by this before the sinusoid (EDM: 250)
        norm_groups: int | str = "auto",            # GroupNorm groups everywhere: "auto", an int, "channels" (G = C)
        post_time_norm: PostTimeNorm = "group",     # the norm right after the injection: "group" or "batch"
        post_time_groups: int | str | None = None,  # its groups (default: norm_groups)
        positional_embedding: bool = False,         # fix 1: add an H×W timestep map after the injection
        bias_init: Literal["default", "zero_operand"] = "default",  # fix 2: zero operand-branch biases
        num_classes: int | None = None,             # class conditioning: one-hot labels of this many classes
    ):
        super().__init__()
        self._check(image_size, in_channels, channels, channel_mult, num_res_blocks, attention_resolutions,
                    dropout, bias_init, time_scale, num_classes)
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = out_channels or in_channels
        self.embedding_dim = channels
        self.sinusoid = dict(flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=downscale_freq_shift)
        self.time_scale = time_scale
        temb_dim = 4 * channels
        self.time_embedding = TimestepEmbedding(channels, temb_dim)
        self.num_classes = num_classes
        # bias-free, so that an all-zero label row is exactly the unconditional model
        self.label_embedding = None if num_classes is None else nn.Linear(num_classes, temb_dim, bias=False)

        def stage(c_in: int, c_out: int, size: int) -> _Stage:
            block = DDPMResidualBlock(
                c_in, c_out, temb_dim, dropout, norm_groups, post_time_norm,
                norm_groups if post_time_groups is None else post_time_groups, injection,
                (size, size) if positional_embedding else None,
                dict(embedding_dim=channels, **self.sinusoid))
            attention = AttentionBlock(c_out, norm_groups, num_heads) if size in attention_resolutions else None
            return _Stage(block, attention)

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths, size, skip_widths = [channels], image_size, [channels]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(stage(widths[-1], channels * mult, size))
                widths.append(channels * mult)
                skip_widths.append(channels * mult)
            if level < len(channel_mult) - 1:
                self.down.append(Downsample(widths[-1]))
                size //= 2
                skip_widths.append(widths[-1])
        width = widths[-1]
        self.middle = nn.ModuleList([stage(width, width, size), stage(width, width, size)])
        self.middle[0].attention = AttentionBlock(width, norm_groups, num_heads)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(stage(width + skip_widths.pop(), channels * mult, size))
                width = channels * mult
            if level > 0:
                self.up.append(Upsample(width))
                size *= 2
        self.norm_out = group_norm(width, norm_groups)
        self.conv_out = nn.Conv2d(width, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # DDPM/ADM: the network starts by predicting 0
        nn.init.zeros_(self.conv_out.bias)
        if bias_init == "zero_operand":
            apply_bias_init_policy(self)
        self._warn_if_time_cancels(norm_groups, post_time_norm, post_time_groups)

    def _warn_if_time_cancels(self, norm_groups, post_time_norm, post_time_groups) -> None:
        layers = [(f"{name}.norm2", cause) for name, module in self.named_modules()
                  if isinstance(module, DDPMResidualBlock) and (cause := module.time_cancelling_norm()) is not None]
        if post_time_norm == "batch":
            fix = "pass post_time_norm='group' with norm_groups='auto' or 1"
        else:
            name = "norm_groups" if post_time_groups is None else "post_time_groups"
            fix = f"pass {name}='auto' or 1 (fewer groups than channels)"
        warn_time_cancellation(layers, fix + ", positional_embedding=True, or injection='scale_shift'", stacklevel=3)

    @property
    def time_range(self) -> tuple[float, float]:
        """The span of t the sinusoidal embedding is laid out for: [0, 1000/time_scale), whose scaled
        values cover DDPM's 1000 timesteps (max_period 10⁴). ``EDMPrecond`` checks it; the
        time-awareness audit uses it when no training module says better."""
        return 0.0, 1000.0 / self.time_scale

    @staticmethod
    def _check(image_size, in_channels, channels, channel_mult, num_res_blocks, attention_resolutions,
               dropout, bias_init, time_scale, num_classes) -> None:
        for name, value in [("image_size", image_size), ("in_channels", in_channels), ("channels", channels),
                            ("num_res_blocks", num_res_blocks)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not channel_mult or any(m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {list(channel_mult)}")
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(f"image_size={image_size} must be divisible by 2^(len(channel_mult) - 1) = {factor}; "
                             f"use fewer channel_mult entries")
        sizes = [image_size // 2**i for i in range(len(channel_mult))]
        unknown = [r for r in attention_resolutions if r not in sizes]
        if unknown:
            raise ValueError(f"attention_resolutions {unknown} are not among this U-Net's resolutions {sizes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if bias_init not in ("default", "zero_operand"):
            raise ValueError(f"bias_init must be 'default' or 'zero_operand', got {bias_init!r}")
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None (unconditional), got {num_classes!r}")

    def forward(self, t, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        t = time_as_tensor(t, x)
        t = self.time_scale * (t.expand(x.shape[0]) if t.dim() == 0 else t)  # also read by positional maps
        emb = self.time_embedding(sinusoidal_timestep_embedding(t, self.embedding_dim, **self.sinusoid))
        emb = self._add_labels(emb, class_labels)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb, t) if isinstance(layer, _Stage) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb, t)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb, t) if isinstance(layer, _Stage) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _add_labels(self, emb: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """emb + label_embedding(class_labels); None is the all-zero row, i.e. emb itself."""
        if class_labels is None:
            return emb
        if self.label_embedding is None:
            raise ValueError("class_labels were given to an unconditional DDPMUNet; build it with "
                             "num_classes=<number of classes>, or pass class_labels=None")
        expected = (emb.shape[0], self.num_classes)
        if tuple(class_labels.shape) != expected or not class_labels.is_floating_point():
            raise ValueError(f"class_labels must be a float one-hot tensor of shape {expected} (all-zero rows: "
                             f"unconditional), got {class_labels.dtype} of shape {tuple(class_labels.shape)}; "
                             f"integer classes c become torch.nn.functional.one_hot(c, {self.num_classes}).float()")
        return emb + self.label_embedding(class_labels.to(emb.dtype))
