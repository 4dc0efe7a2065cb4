"""scikit-learn's bundled 8x8 handwritten digits: the offline default dataset (no download)."""

from __future__ import annotations

from typing import Literal

import torch

from .image_module import DIFFUSION, ImageDataModule, channel_stats
from .sampling import stratified_split
from .transforms import RandomCrop

__all__ = ["DigitsDataModule"]


class DigitsDataModule(ImageDataModule):
    """The 1797 UCI/scikit-learn 8x8 digits with a fixed, stratified train/val/test split.

    Default sizes: test 360, validation 180, train 1257 (20 % / 10 % / 70 %). Pixels (0..16) are
    scaled to [0, 1] and normalised with the training split's mean and standard deviation. The
    optional augmentation shifts each image by up to ``max_shift`` pixels (zero-padded, i.e. the
    blank background), because flips and erasing destroy 8x8 digits.
    ``normalization="diffusion"`` maps pixels to [-1, 1] for generative models (augmentation: flips
    only, off by default since digits are not mirror-symmetric).

    Batches: x (batch, 1, 8, 8) float32, y (batch,) int64.
    """

    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)
    pixel_max = 16.0

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 180,
        test_size: int = 360,
        seed: int = 0,
        split_seed: int = 0,
        augment: bool = False,
        max_shift: int = 1,
        normalization: Literal["dataset", "diffusion"] = "dataset",
        hflip: bool = False,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, val_size, seed, split_seed, augment)
        if normalization not in ("dataset", DIFFUSION):
            raise ValueError(f"normalization must be 'dataset' or 'diffusion', got {normalization!r}")
        if test_size < 1:
            raise ValueError(f"test_size must be >= 1, got {test_size}")
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.test_size = test_size  # images held out for testing
        self.max_shift = max_shift  # largest shift in pixels when augment=True
        self.normalization = normalization  # "diffusion": pixels in [-1, 1], augmentation = flips only
        self.hflip = hflip  # with normalization="diffusion" and augment=True: random horizontal flips

    def _load_pool_and_test(self):
        from sklearn.datasets import load_digits  # bundled with scikit-learn, read from its package

        digits = load_digits()
        images = torch.from_numpy(digits.images).to(torch.uint8).unsqueeze(1)  # (1797, 1, 8, 8)
        labels = torch.from_numpy(digits.target).long()
        if self.test_size + self.val_size >= len(labels):
            raise ValueError(
                f"test_size + val_size must be < {len(labels)}, got {self.test_size} + {self.val_size}"
            )
        # A different stream from the validation split (same seed would correlate the two draws).
        pool_idx, test_idx = stratified_split(labels.numpy(), self.test_size, self.split_seed + 1)
        pool_idx, test_idx = torch.from_numpy(pool_idx), torch.from_numpy(test_idx)
        return images[pool_idx], labels[pool_idx], images[test_idx], labels[test_idx]

    def _normalization(self, train_images):
        return channel_stats(train_images, self.pixel_max)

    def _augmentation(self, mean, std):
        return RandomCrop(self.max_shift, fill=(-mean / std).tolist())
