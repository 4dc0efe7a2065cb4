"""Diffusion networks with pynodeta's forward(t, x): the DDPM/ADM U-Net with the options of Kim et al.
2024, and EDM2's magnitude-preserving U-Net."""

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
