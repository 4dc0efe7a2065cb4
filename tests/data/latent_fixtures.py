"""A tiny randomly initialised diffusers AutoencoderKL saved to disk, and small JPEG class folders, for the
latent-diffusion tests (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# downsampling factor 2 (two blocks), 4 latent channels: EDM2's constants for SD's VAE apply
TINY_VAE = {"block_out_channels": (8, 16), "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2, "latent_channels": 4, "sample_size": 16,
            "layers_per_block": 1, "norm_num_groups": 8}


def save_tiny_vae(folder: Path, seed: int = 0):
    """A random AutoencoderKL saved with save_pretrained (safetensors) in ``folder``; returns the model."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE).eval()
    vae.save_pretrained(folder)
    return vae


def write_jpeg_folders(root: Path, classes=("n02", "n01", "b03"), per_class: int = 3, seed: int = 0) -> Path:
    """``root/<class>/img<i>.JPEG`` with random contents and sizes (some wider, some taller than square)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            height, width = int(rng.integers(18, 40)), int(rng.integers(18, 40))
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i}.JPEG", quality=95)
    return root
