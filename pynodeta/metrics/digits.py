"""A small feature extractor for the 8×8 digits: the digits' stand-in for FID's Inception network.

The weights ship with the package (``weights/digits_features.pt``), produced deterministically by
``benchmarks/train_digits_features.py`` (a classifier trained on the digits' training pool; the
features are its 64-dimensional penultimate layer, like Inception's pool3).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

__all__ = ["DigitsFeatureNet", "DigitsFeatureExtractor", "DIGITS_FEATURES_WEIGHTS"]

DIGITS_FEATURES_WEIGHTS = "digits_features.pt"


class DigitsFeatureNet(nn.Module):
    """conv 3×3 (16) → SiLU → conv 3×3 stride 2 (32) → SiLU → linear (64) → SiLU = features → linear (10)."""

    feature_dim = 64

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(32 * 4 * 4, self.feature_dim), nn.SiLU(),
        )
        self.classifier = nn.Linear(self.feature_dim, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class DigitsFeatureExtractor(nn.Module):
    """images (batch, 1, 8, 8) in [−1, 1] (pixel/8 − 1, the diffusion data scale) → features (batch, 64).

    Args:
        weights_path: a state dict of ``DigitsFeatureNet``; default: the weights shipped with pynodeta.
    """

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.weights_path = None if weights_path is None else str(weights_path)  # None: the shipped weights
        self.net = DigitsFeatureNet()
        if weights_path is None:
            source = resources.files("pynodeta.metrics").joinpath("weights", DIGITS_FEATURES_WEIGHTS)
            with resources.as_file(source) as path:
                state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            if not Path(weights_path).is_file():
                raise FileNotFoundError(f"weights_path {str(weights_path)!r} does not exist; leave it out for the "
                                        "shipped weights or create them with benchmarks/train_digits_features.py")
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(self._checked(images))

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (batch, 10) of the digit each image shows: the classifier the features were trained with
        (about 97 % test accuracy), which scores how often a class-conditional model draws the class asked for."""
        return self.net(self._checked(images))

    def _checked(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
            raise ValueError(f"images must have shape (batch, 1, 8, 8), got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN/Inf; the sampler should have refused them earlier")
        parameter = next(self.net.parameters())
        return images.to(device=parameter.device, dtype=parameter.dtype)
