"""Dataset names -> DataModule classes, for configs and the command line."""

from __future__ import annotations

import lightning

from .digits import DigitsDataModule
from .image_datasets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    MNISTDataModule,
    SVHNDataModule,
    TinyImageNetDataModule,
)

__all__ = ["DATASETS", "get_datamodule"]

DATASETS: dict[str, type[lightning.LightningDataModule]] = {
    "digits": DigitsDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "mnist": MNISTDataModule,
    "svhn": SVHNDataModule,
    "tiny-imagenet": TinyImageNetDataModule,
}


def get_datamodule(name: str, **kwargs) -> lightning.LightningDataModule:
    """Build the DataModule registered as ``name`` with the given constructor arguments."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)
