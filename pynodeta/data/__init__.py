"""Datasets as Lightning DataModules.

- ``DigitsDataModule``: scikit-learn's bundled 8x8 digits, the offline default (no download).
- ``CIFAR10DataModule``, ``CIFAR100DataModule``, ``MNISTDataModule``, ``SVHNDataModule``,
  ``TinyImageNetDataModule``: the standard on-disk formats read from ``data_dir``, with the TA-BN
  paper's augmentations; ``get_datamodule(name, **kwargs)`` builds one from its name in ``DATASETS``.
- ``ImageFolderDataModule``: class-labelled image folders (ImageNet's ``train/<wnid>/*.JPEG``), centre-cropped
  as EDM2 prepares ImageNet; ``LatentDataModule``: the VAE latents ``pynodeta encode`` writes, for latent
  diffusion.
- ``TrajectoryDataModule``: seeded simulations of the systems in ``SYSTEMS`` (mass-spring,
  pendulum, Lotka-Volterra, driven oscillator).
"""

from .digits import DigitsDataModule
from .errors import DatasetFileError, DatasetNotFoundError
from .image_datasets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FileImageDataModule,
    MNISTDataModule,
    SVHNDataModule,
    TinyImageNetDataModule,
)
from .image_folder import ImageFolder, center_crop_imagenet
from .image_folder_module import ImageFolderDataModule
from .image_module import ImageDataModule, ImageTensorDataset
from .latent_encoding import encode_image_folder
from .latent_module import LatentDataModule
from .registry import DATASETS, get_datamodule
from .sampling import EpochShuffleSampler, stratified_split
from .systems import SYSTEMS, DampedMassSpring, DrivenOscillator, LotkaVolterra, Pendulum, PhysicalSystem
from .trajectories import TrajectoryCollate, TrajectoryDataModule, TrajectoryDataset, simulate
from .transforms import Compose, RandomCrop, RandomErasing, RandomHorizontalFlip

__all__ = [
    "DATASETS",
    "get_datamodule",
    "DatasetNotFoundError",
    "DatasetFileError",
    "ImageDataModule",
    "ImageTensorDataset",
    "FileImageDataModule",
    "DigitsDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "MNISTDataModule",
    "SVHNDataModule",
    "TinyImageNetDataModule",
    "ImageFolder",
    "center_crop_imagenet",
    "ImageFolderDataModule",
    "LatentDataModule",
    "encode_image_folder",
    "Compose",
    "RandomHorizontalFlip",
    "RandomCrop",
    "RandomErasing",
    "stratified_split",
    "EpochShuffleSampler",
    "SYSTEMS",
    "PhysicalSystem",
    "DampedMassSpring",
    "Pendulum",
    "LotkaVolterra",
    "DrivenOscillator",
    "simulate",
    "TrajectoryDataset",
    "TrajectoryCollate",
    "TrajectoryDataModule",
]
