"""Diffusion networks with pynodeta's forward(t, x): the DDPM/ADM U-Net with the seed-001 options."""

from .blocks import AttentionBlock, DDPMResidualBlock, Downsample, TimeProjection, Upsample
from .ddpm_unet import DDPMUNet
from .edm2_unet import EDM2Block, EDM2UNet

__all__ = [
    "DDPMUNet",
    "EDM2UNet",
    "EDM2Block",
    "DDPMResidualBlock",
    "AttentionBlock",
    "TimeProjection",
    "Downsample",
    "Upsample",
]
