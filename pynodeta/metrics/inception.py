"""The standard FID feature extractor (Inception-v3, pool3, 2048 features) from weights on the user's disk.

Its weights cannot be downloaded here, so the extractor takes a path: NVlabs' TorchScript detector
``inception-2015-12-05.pkl`` (the file EDM, EDM2 and StyleGAN compute FID with) or the same module
saved with ``torch.jit.save`` (``.pt``). Only load files you trust: a ``.pkl`` is unpickled.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["InceptionFeatureExtractor", "INCEPTION_URL"]

INCEPTION_URL = ("https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
                 "inception-2015-12-05.pkl")


def _load_detector(path: Path) -> nn.Module:
    if zipfile.is_zipfile(path):  # a torch.jit.save archive
        return torch.jit.load(str(path), map_location="cpu")
    if path.suffix == ".pkl":
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 (the user's own detector file; see the module docstring)
    raise ValueError(f"{str(path)!r} is neither a TorchScript archive nor NVlabs' .pkl detector; download "
                     f"{INCEPTION_URL} and pass its path")


class InceptionFeatureExtractor(nn.Module):
    """images (batch, 1 or 3, H, W) in [−1, 1] → Inception pool3 features (batch, 2048).

    Images are converted to uint8 RGB in [0, 255] (grey images repeated over 3 channels), which is
    what the detector expects; it resizes to 299×299 itself.

    Args:
        weights_path: path of ``inception-2015-12-05.pkl`` or a ``torch.jit.save`` copy of it.
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = Path(weights_path) if weights_path is not None else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"weights_path {str(weights_path)!r} is not a file. FID needs the Inception detector on disk: "
                f"download {INCEPTION_URL} on a machine with internet access and pass its path; for the 8×8 "
                "digits use pynodeta.metrics.DigitsFeatureExtractor instead"
            )
        self.detector = _load_detector(path)
        self.detector.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (batch, 1 or 3, H, W), got {tuple(images.shape)}")
        pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        return self.detector(pixels, return_features=True).float()
