"""DataModules for CIFAR-10, CIFAR-100, MNIST, SVHN and Tiny-ImageNet (files read from data_dir).

Augmentation (TA-BN paper, Sec. 5, as in its released code): on the normalised image, random
horizontal flip, RandomErasing(scale 0.04-0.2, ratio 0.5-2, value 0), then a random crop with
padding 4 (8 for 64x64 Tiny-ImageNet) whose padding is 0 in normalised units, in that order.
The released code also flips MNIST and SVHN digits; ``hflip=False`` turns that off.

Normalisation: ``"paper"`` uses the constants of the released TA-BN code (ImageNet statistics for
CIFAR and Tiny-ImageNet, 0.5 / 0.5 for MNIST and SVHN); ``"dataset"`` uses each dataset's own
published per-channel training statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from .image_module import DIFFUSION, ImageDataModule
from .readers import (
    check_cifar10,
    check_cifar100,
    check_mnist,
    check_svhn,
    check_tiny_imagenet,
    read_cifar10,
    read_cifar100,
    read_mnist,
    read_svhn,
    read_tiny_imagenet,
)
from .transforms import Compose, RandomCrop, RandomErasing, RandomHorizontalFlip

__all__ = [
    "FileImageDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "MNISTDataModule",
    "SVHNDataModule",
    "TinyImageNetDataModule",
]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class FileImageDataModule(ImageDataModule):
    """An image dataset read from ``data_dir`` in its standard format (see the subclasses)."""

    checker = None  # staticmethod (root) raising DatasetNotFoundError when a file is missing
    reader = None  # staticmethod (root, train) -> (uint8 images, int64 labels)
    normalizations: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    crop_padding = 4

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 5000,
        seed: int = 0,
        split_seed: int = 0,
        augment: bool = True,
        hflip: bool = True,
        normalization: Literal["paper", "dataset", "diffusion"] = "paper",
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, val_size, seed, split_seed, augment)
        if normalization not in self.normalizations and normalization != DIFFUSION:
            raise ValueError(
                f"normalization must be one of {sorted([*self.normalizations, DIFFUSION])}, got {normalization!r}"
            )
        self.data_dir = Path(data_dir)  # folder holding the dataset in its standard layout
        self.hflip = hflip  # random horizontal flips in the augmentation
        self.normalization = normalization  # which (mean, std) constants to use

    def check_files(self) -> None:
        type(self).checker(self.data_dir)

    def _read(self, train: bool):
        images, labels = type(self).reader(self.data_dir, train=train)
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.name} images in {self.data_dir} have shape {tuple(images.shape[1:])}, "
                f"expected {self.input_shape}"
            )
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(
                f"{self.name} labels must lie in [0, {self.num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return images, labels

    def _load_pool_and_test(self):
        return (*self._read(train=True), *self._read(train=False))

    def _normalization(self, train_images: torch.Tensor):
        return self.normalizations[self.normalization]

    def _augmentation(self, mean: torch.Tensor, std: torch.Tensor):
        # Erasing and crop padding fill 0 in normalised units (the mean colour), not black: the
        # released code applies torchvision's transforms after Normalize.
        flip = [RandomHorizontalFlip()] if self.hflip else []
        return Compose(
            [*flip, RandomErasing(scale=(0.04, 0.2), ratio=(0.5, 2.0)), RandomCrop(self.crop_padding)]
        )


class CIFAR10DataModule(FileImageDataModule):
    """CIFAR-10: ``data_dir/cifar-10-batches-py/``; 50,000 train (minus val_size), 10,000 test."""

    name, num_classes, input_shape = "cifar10", 10, (3, 32, 32)
    checker, reader = staticmethod(check_cifar10), staticmethod(read_cifar10)
    normalizations = {
        "paper": IMAGENET_STATS,
        "dataset": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    }


class CIFAR100DataModule(FileImageDataModule):
    """CIFAR-100 (fine labels): ``data_dir/cifar-100-python/``; 50,000 train, 10,000 test."""

    name, num_classes, input_shape = "cifar100", 100, (3, 32, 32)
    checker, reader = staticmethod(check_cifar100), staticmethod(read_cifar100)
    normalizations = {
        "paper": IMAGENET_STATS,
        "dataset": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    }


class MNISTDataModule(FileImageDataModule):
    """MNIST: IDX files in ``data_dir/MNIST/raw/`` or ``data_dir/``; 60,000 train, 10,000 test."""

    name, num_classes, input_shape = "mnist", 10, (1, 28, 28)
    checker, reader = staticmethod(check_mnist), staticmethod(read_mnist)
    normalizations = {"paper": ((0.5,), (0.5,)), "dataset": ((0.1307,), (0.3081,))}


class SVHNDataModule(FileImageDataModule):
    """SVHN: ``data_dir/{train,test}_32x32.mat``; 73,257 train, 26,032 test (label 10 -> 0)."""

    name, num_classes, input_shape = "svhn", 10, (3, 32, 32)
    checker, reader = staticmethod(check_svhn), staticmethod(read_svhn)
    normalizations = {
        "paper": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        "dataset": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    }


class TinyImageNetDataModule(FileImageDataModule):
    """Tiny-ImageNet-200: ``data_dir/tiny-imagenet-200/``; 100,000 train, its 10,000 val as test."""

    name, num_classes, input_shape = "tiny-imagenet", 200, (3, 64, 64)
    checker, reader = staticmethod(check_tiny_imagenet), staticmethod(read_tiny_imagenet)
    crop_padding = 8
    normalizations = {
        "paper": IMAGENET_STATS,
        "dataset": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    }
