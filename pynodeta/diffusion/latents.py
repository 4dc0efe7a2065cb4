"""Latent diffusion with a user's diffusers ``AutoencoderKL``, in NVlabs EDM2's convention.

EDM2 (Karras et al. 2024; NVlabs/edm2 ``training/encoders.py``, ``StabilityVAEEncoder``) splits encoding in two:

* ``encode_pixels``: uint8 pixels → *raw latents*, the VAE encoder's posterior mean and standard deviation
  concatenated along channels, (n, 2·C, h, w) — 8 channels for Stable Diffusion's VAE. This is what a
  dataset stores (``pynodeta encode``), so that every epoch draws a fresh posterior sample.
* ``encode_latents``: raw latents → *final latents*, ``mean + std·ε`` (ε ~ N(0, I)), then the affine map
  ``x·scale + bias`` with ``scale = final_std / raw_std`` and ``bias = final_mean − raw_mean·scale``, per
  channel, which takes the latents to the data scale the network trains on (σ_data = 0.5).
* ``decode``: final latents → uint8 pixels, the affine map inverted, then the VAE decoder.

Two details of EDM2's convention are kept as released, because its constants depend on them: pixels enter the
VAE as ``x / 255`` in [0, 1] (not diffusers' [-1, 1]), and decoded images are clamped to [0, 1] before
``·255``; the VAE's own ``scaling_factor`` is not used (``raw_mean``/``raw_std`` replace it).

diffusers is optional (``pip install pynodeta[latent]``): it is imported when a VAE is loaded, and the VAE is
read from a local folder written by ``AutoencoderKL.save_pretrained`` (``config.json`` and safetensors weights,
which hold no code), never downloaded and never unpickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["LatentScaling", "EDM2_SD_VAE_SCALING", "LatentEncoder", "load_autoencoder", "draw_latents",
           "vae_folder"]


def _floats(name: str, values) -> tuple[float, ...]:
    values = (values,) if isinstance(values, (int, float)) and not isinstance(values, bool) else values
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers, got {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must hold finite numbers, got {values!r}")
    return out


@dataclass(frozen=True)
class LatentScaling:
    """EDM2's per-channel affine map between raw and final latents (``StabilityVAEEncoder``'s arguments).

    Attributes:
        raw_mean: assumed mean of the raw latents, one per latent channel (or one for all).
        raw_std: assumed standard deviation of the raw latents (> 0).
        final_mean: desired mean of the final latents (EDM2: 0).
        final_std: desired standard deviation of the final latents (EDM2: 0.5, the networks' σ_data).
    """

    raw_mean: tuple[float, ...]
    raw_std: tuple[float, ...]
    final_mean: tuple[float, ...] = (0.0,)
    final_std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        for name in ("raw_mean", "raw_std", "final_mean", "final_std"):
            object.__setattr__(self, name, _floats(name, getattr(self, name)))
        for name in ("raw_std", "final_std"):
            if min(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0 (a standard deviation), got {list(getattr(self, name))}")
        lengths = {len(getattr(self, n)) for n in ("raw_mean", "raw_std", "final_mean", "final_std")} - {1}
        if len(lengths) > 1:
            raise ValueError(f"raw_mean, raw_std, final_mean and final_std must have one value per latent channel "
                             f"(or one for all), got lengths {sorted(lengths)}")

    @property
    def scale(self) -> np.ndarray:
        """final_std / raw_std, computed in float32 as EDM2 does (so the constants match bit for bit)."""
        return np.float32(self.final_std) / np.float32(self.raw_std)

    @property
    def bias(self) -> np.ndarray:
        """final_mean − raw_mean · scale, in float32 as EDM2."""
        return np.float32(self.final_mean) - np.float32(self.raw_mean) * self.scale

    @property
    def channels(self) -> int | None:
        """Latent channels the constants are for (None: one value for every channel)."""
        lengths = {len(getattr(self, n)) for n in ("raw_mean", "raw_std", "final_mean", "final_std")}
        return max(lengths) if max(lengths) > 1 else None

    def _affine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = self.channels
        if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
            raise ValueError(f"latents must be (batch, {channels or 'C'}, height, width) for these constants, "
                             f"got {tuple(x.shape)}")
        scale = torch.as_tensor(np.broadcast_to(self.scale, (x.shape[1],)).copy(), device=x.device)
        bias = torch.as_tensor(np.broadcast_to(self.bias, (x.shape[1],)).copy(), device=x.device)
        return scale.reshape(1, -1, 1, 1), bias.reshape(1, -1, 1, 1)

    def scale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Raw latent samples (batch, C, h, w) → final latents, ``x·scale + bias`` (float32)."""
        scale, bias = self._affine(x)
        return x.to(torch.float32) * scale + bias

    def unscale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Final latents → raw latent samples, ``(x − bias) / scale``: EDM2's ``decode`` before the VAE."""
        scale, bias = self._affine(x)
        return (x.to(torch.float32) - bias) / scale

    def to_dict(self) -> dict:
        """Plain lists, for the shards' index and the run's record."""
        return {name: list(getattr(self, name)) for name in ("raw_mean", "raw_std", "final_mean", "final_std")}

    @classmethod
    def from_dict(cls, values: dict) -> LatentScaling:
        if not isinstance(values, dict) or not {"raw_mean", "raw_std"} <= set(values):
            raise ValueError(f"latent scaling must be a mapping with raw_mean, raw_std (final_mean, final_std), "
                             f"got {values!r}")
        unknown = set(values) - {"raw_mean", "raw_std", "final_mean", "final_std"}
        if unknown:
            raise ValueError(f"unknown latent scaling keys {sorted(unknown)}")
        return cls(**values)


# NVlabs/edm2 training/encoders.py, StabilityVAEEncoder's defaults, measured on ImageNet-512 encoded with
# stabilityai/sd-vae-ft-mse (4 latent channels).
EDM2_SD_VAE_SCALING = LatentScaling(raw_mean=(5.81, 3.25, 0.12, -2.15), raw_std=(4.17, 4.62, 3.71, 3.28),
                                    final_mean=(0.0,), final_std=(0.5,))


def draw_latents(mean_std: torch.Tensor, scaling: LatentScaling, generator: torch.Generator | None = None):
    """Final latents from stored raw latents: EDM2's ``encode_latents``.

    mean_std: (batch, 2·C, h, w), the posterior mean then its standard deviation along channels.
    Returns (batch, C, h, w) float32 ``scale_latents(mean + std·ε)``, ε drawn from ``generator``.
    """
    if mean_std.dim() != 4 or mean_std.shape[1] % 2:
        raise ValueError(f"raw latents must be (batch, 2*C, height, width), the mean then the std, got "
                         f"{tuple(mean_std.shape)}")
    mean, std = mean_std.to(torch.float32).chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return scaling.scale_latents(mean + noise * std)


def vae_folder(path: str | Path) -> Path:
    """The folder of a saved ``AutoencoderKL``: ``path`` itself, or its ``vae/`` (a whole pipeline's folder)."""
    path = Path(path)
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            if not any(folder.glob("*.safetensors")):
                raise ValueError(f"vae {str(path)!r}: {str(folder)!r} has no .safetensors weights; pickled weights "
                                 f"(.bin, .ckpt) are not read. Save the VAE with AutoencoderKL.save_pretrained(folder) "
                                 f"(safetensors by default) and pass that folder")
            return folder
    raise ValueError(f"vae {str(path)!r} is not a saved diffusers AutoencoderKL (no config.json in it or in its vae/); "
                     f"pass the folder written by AutoencoderKL.save_pretrained(folder)")


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu"):
    """A diffusers ``AutoencoderKL`` from a local folder (safetensors only, nothing downloaded), in eval mode
    without gradients."""
    folder = vae_folder(path)
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise ImportError("latent diffusion needs diffusers: pip install 'pynodeta[latent]' "
                          "(or pip install 'diffusers>=0.30')") from error
    vae = AutoencoderKL.from_pretrained(folder, use_safetensors=True, local_files_only=True,
                                        low_cpu_mem_usage=False)
    return vae.eval().requires_grad_(False).to(device)


class LatentEncoder:
    """Pixels ↔ latents through a VAE, with EDM2's ``StabilityVAEEncoder`` methods and conventions.

    ``vae``: a diffusers ``AutoencoderKL`` (:func:`load_autoencoder`) or a folder holding one;
    ``scaling``: the raw → final constants (default EDM2's, for Stable Diffusion's 4-channel VAE);
    ``batch_size``: images per VAE call.
    """

    def __init__(self, vae, scaling: LatentScaling = EDM2_SD_VAE_SCALING, batch_size: int = 8,
                 device: torch.device | str = "cpu"):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1 (images per VAE call), got {batch_size!r}")
        self.vae = load_autoencoder(vae, device) if isinstance(vae, (str, Path)) else vae
        self.source = str(vae) if isinstance(vae, (str, Path)) else type(vae).__name__  # for messages
        self.scaling, self.batch_size = scaling, batch_size
        channels = int(self.vae.config.latent_channels)
        if scaling.channels not in (None, channels):
            raise ValueError(f"scaling has constants for {scaling.channels} latent channels but the VAE has "
                             f"{channels}; pass raw_mean/raw_std measured for this VAE")
        self.latent_channels = channels
        self.downsampling = 2 ** (len(self.vae.config.block_out_channels) - 1)  # pixels per latent, per side

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (n, 3, H, W) → raw latents (n, 2·C, H/f, W/f): posterior mean and std (float32)."""
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be uint8 (n, 3, height, width), got {pixels.dtype} {tuple(pixels.shape)}")
        x = pixels.to(self.device, torch.float32) / 255  # EDM2: [0, 1] into the encoder
        raw = []
        for batch in x.split(self.batch_size):
            posterior = self.vae.encode(batch).latent_dist
            raw.append(torch.cat([posterior.mean, posterior.std], dim=1))
        return torch.cat(raw).float()

    def encode_latents(self, mean_std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw latents → final latents (:func:`draw_latents`)."""
        return draw_latents(mean_std, self.scaling, generator)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 pixels → final latents."""
        return self.encode_latents(self.encode_pixels(pixels), generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents (n, C, h, w) → uint8 pixels (n, 3, h·f, w·f), clamped to [0, 1] before ·255 as EDM2."""
        x = self.scaling.unscale_latents(latents.to(self.device))
        images = torch.cat([self.vae.decode(batch).sample for batch in x.split(self.batch_size)])
        return images.clamp(0, 1).mul(255).to(torch.uint8)

    def decode_to_unit_range(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents → float images in [-1, 1] (n, 3, H, W), pynodeta's image data scale, for grids and
        tensors: EDM2's uint8 pixels p as p/127.5 − 1 (its ``StandardRGBEncoder``)."""
        return self.decode(latents).to(torch.float32) / 127.5 - 1

    def record(self, path: str | Path) -> dict:
        """What a run keeps to decode its samples: the VAE folder and the scaling constants."""
        return {"vae": str(Path(path).resolve()), "scaling": self.scaling.to_dict()}
