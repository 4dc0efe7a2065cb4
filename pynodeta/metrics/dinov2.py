"""FD_DINOv2's feature extractor (EDM2 reports it beside FID): DINOv2 ViT-L/14's class token, 1024 features.

EDM2 (NVlabs/edm2, ``calculate_metrics.py``, ``DINOv2Detector``, its default ``resize_mode='torch'``) scores
uint8 RGB images as: resize to 224×224 with ``F.interpolate(mode='bicubic', antialias=True)`` on float pixels
in [0, 255] (no clamping), divide by 255, normalise with ImageNet's mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225), and run ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')``, whose output is
the final-norm class token (``x_norm_clstoken``).

We run timm's ``vit_large_patch14_dinov2`` (the same network) built for 224×224 inputs. The hub model keeps its
37×37 position grid and resamples it at every call (facebookresearch/dinov2,
``dinov2/models/vision_transformer.py``, ``interpolate_pos_encoding``: bicubic with ``scale_factor`` (16 + 0.1) / 37,
no antialias); timm would resample differently (to a size, with antialias), so we resample the grid once,
the hub's way, before loading the weights into timm.

timm (and the torchvision it imports) is optional: ``pip install 'pynodeta[metrics]'``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .inception import uint8_rgb

__all__ = ["DINOv2FeatureExtractor", "DINOV2_WEIGHTS_URL", "edm2_dinov2_pixels", "dinov2_position_embedding"]

DINOV2_WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_SIZE, _PATCH = 224, 14


def edm2_dinov2_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (batch, 3, H, W) → EDM2's DINOv2 input (batch, 3, 224, 224), float32, ImageNet-normalised."""
    x = F.interpolate(images.to(torch.float32), size=(_SIZE, _SIZE), mode="bicubic", antialias=True)
    x = x / 255
    mean = torch.tensor(_IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(_IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - mean) / std


def dinov2_position_embedding(pos_embed: torch.Tensor, grid: int = _SIZE // _PATCH,
                              offset: float = 0.1) -> torch.Tensor:
    """(1, 1 + M², dim) → (1, 1 + grid², dim): the position embedding DINOv2's hub ViT-L/14 adds to a
    grid×grid patch image (``interpolate_pos_encoding`` with ``interpolate_offset=0.1``, no antialias)."""
    count = pos_embed.shape[1] - 1
    side = math.isqrt(count)
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or side * side != count:
        raise ValueError(f"pos_embed must have shape (1, 1 + M², dim), got {tuple(pos_embed.shape)}")
    if side == grid:
        return pos_embed
    dim, original = pos_embed.shape[2], pos_embed.dtype
    patches = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = (grid + offset) / side  # the hub's "historical kludge" (facebookresearch/dino issue 8), kept for parity
    patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([pos_embed[:, :1].float(), patches], dim=1).to(original)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "pos_embed" not in state:
        raise ValueError(f"weights_path {str(path)!r} is not a DINOv2 state dict (no pos_embed); pass Meta's "
                         f"{DINOV2_WEIGHTS_URL} or timm's vit_large_patch14_dinov2.lvd142m model.safetensors")
    return state


def _import_timm():
    try:
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn
    except ImportError as error:
        raise ImportError(f"FD_DINOv2 runs DINOv2 through timm, which did not import ({error}); pip install "
                          "'pynodeta[metrics]' (timm needs a torchvision that matches your torch)") from None
    return timm, checkpoint_filter_fn


class DINOv2FeatureExtractor(nn.Module):
    """images (batch, 1 or 3, H, W) in [−1, 1] → DINOv2 ViT-L/14 class token (batch, 1024), EDM2's FD_DINOv2 features.

    Images become uint8 RGB first (as saved PNGs, and as ``InceptionFeatureExtractor`` does), then EDM2's
    preprocessing (:func:`edm2_dinov2_pixels`).

    Args:
        weights_path: Meta's ``dinov2_vitl14_pretrain.pth`` (the weights ``torch.hub`` gives EDM2) or timm's
            ``vit_large_patch14_dinov2`` ``.safetensors``/``.pth``; read with ``weights_only=True``.
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"weights_path {str(weights_path)!r} is not a file; download {DINOV2_WEIGHTS_URL} "
                                    "on a machine with internet access and pass its path")
        self.weights_path = str(path)  # which features these are (evaluation caches by it)
        timm, checkpoint_filter_fn = _import_timm()
        state = _read_weights(path)
        state["pos_embed"] = dinov2_position_embedding(state["pos_embed"])
        self.model = timm.create_model("vit_large_patch14_dinov2", pretrained=False, num_classes=0, img_size=_SIZE)
        try:  # checkpoint_filter_fn maps Meta's names to timm's (mask_token dropped); the grid already fits
            self.model.load_state_dict(checkpoint_filter_fn(state, self.model), strict=True)
        except RuntimeError as error:
            raise ValueError(f"weights_path {str(path)!r} is not DINOv2 ViT-L/14 ({str(error).splitlines()[0]}); pass "
                             f"{DINOV2_WEIGHTS_URL}") from None
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(edm2_dinov2_pixels(uint8_rgb(images))).float()
