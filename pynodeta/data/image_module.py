"""The Lightning DataModule shared by every image-classification dataset.

A subclass says how to read its train pool and test set (uint8 images, int64 labels), its number of
classes, input shape, normalisation and augmentation; this class carves the seeded validation split,
builds the loaders and applies augmentation to training batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .sampling import EpochShuffleSampler, stratified_split
from .transforms import RandomHorizontalFlip

__all__ = ["ImageTensorDataset", "ImageDataModule", "DIFFUSION", "diffusion_augmentation"]

DIFFUSION = "diffusion"  # the normalization option of generative models: [-1, 1], flips only


def diffusion_augmentation(hflip: bool):
    """The training transform of ``normalization="diffusion"``: horizontal flips where asked, else none."""
    return RandomHorizontalFlip() if hflip else None


class ImageTensorDataset(Dataset):
    """Images kept as integers in memory, returned as normalised float32.

    images: (n, channels, height, width) uint8 with values in [0, pixel_max]; labels: (n,) int64.
    Item: ((channels, height, width) float32 equal to (images / pixel_max - mean) / std, label).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, pixel_max: float = 255.0):
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(
                f"images must be (n, channels, height, width) with one label each, got images "
                f"{tuple(images.shape)} and labels {tuple(labels.shape)}"
            )
        self.images, self.labels, self.pixel_max = images, labels.long(), pixel_max
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].to(torch.float32) / self.pixel_max
        return (image - self.mean) / self.std, self.labels[index]


class ImageDataModule(lightning.LightningDataModule):
    """Train / validation / test loaders for an in-memory image-classification dataset.

    Batches are ``(x, y)``: x (batch, channels, height, width) float32, normalised; y (batch,) int64.
    The validation split is carved from the training pool with a stratified split seeded by
    ``split_seed`` (kept fixed across training seeds so that every run is tested on the same images).
    ``val_size=0`` keeps the whole pool for training and validates on the test set, as the papers'
    released code does; selecting checkpoints on it then leaks test information.
    Augmentation is applied to training batches only, after they reach the device, with a generator
    seeded by ``seed`` (plus the global rank); its state is saved in checkpoints, so a resumed run
    draws the same augmentations. Outside a Trainer call :meth:`apply_augmentation` yourself.

    Subclasses set ``name``, ``num_classes``, ``input_shape``, ``pixel_max`` and implement
    ``_load_pool_and_test``, ``_normalization`` and ``_augmentation``.

    ``normalization="diffusion"`` (a subclass option) replaces both for generative models: pixels
    are mapped to [-1, 1] (x = 2·p/pixel_max − 1, the DDPM/EDM data scale) and the only
    augmentation is a random horizontal flip, and only where ``hflip`` is true (not for digits,
    which are not mirror-symmetric).
    """

    normalization: str = "dataset"  # "diffusion": [-1, 1] and flips only (subclasses expose the option)
    hflip: bool = False             # random horizontal flips (subclasses expose the option)

    name: str = "images"
    num_classes: int
    input_shape: tuple[int, int, int]
    pixel_max: float = 255.0

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 5000,
        seed: int = 0,
        split_seed: int = 0,
        augment: bool = True,
    ):
        super().__init__()
        for arg, value, low in [
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("val_size", val_size, 0),
        ]:
            if value < low:
                raise ValueError(f"{arg} must be >= {low}, got {value}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 or None, got {eval_batch_size}")
        self.batch_size = batch_size  # training batch size
        self.eval_batch_size = eval_batch_size or batch_size  # validation / test batch size
        self.num_workers = num_workers  # DataLoader worker processes (0: load in the main process)
        self.val_size = val_size  # images moved from the training pool to validation (0: validate on test)
        self.seed = seed  # shuffling and augmentation
        self.split_seed = split_seed  # which images go to validation (and to test, where carved)
        self.augment_enabled = augment
        self.train_set = self.val_set = self.test_set = None
        self.augmentation = None
        self._generator: torch.Generator | None = None

    # --- what a subclass provides -------------------------------------------------------------
    def _load_pool_and_test(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pool images, pool labels, test images, test labels); images uint8 (n, C, H, W)."""
        raise NotImplementedError

    def _normalization(self, pool_images: torch.Tensor) -> tuple[Sequence[float], Sequence[float]]:
        """Per-channel (mean, std) applied after scaling pixels to [0, 1]."""
        raise NotImplementedError

    def _augmentation(self, mean: torch.Tensor, std: torch.Tensor):
        """The training transform, given the normalisation (to fill with black or the mean)."""
        raise NotImplementedError

    def check_files(self) -> None:
        """Raise DatasetNotFoundError now if the data is missing (before any training starts)."""

    # --- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.check_files()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        pool_x, pool_y, test_x, test_y = self._load_pool_and_test()
        if self.val_size >= len(pool_y):
            raise ValueError(
                f"val_size must be smaller than the training pool ({len(pool_y)} images), got {self.val_size}"
            )
        train_idx, val_idx = stratified_split(pool_y.numpy(), self.val_size, self.split_seed)
        train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        diffusion = self.normalization == DIFFUSION
        channels = pool_x.shape[1]
        mean, std = ([0.5] * channels, [0.5] * channels) if diffusion else self._normalization(pool_x[train_idx])
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)
        make = lambda x, y: ImageTensorDataset(x, y, self.mean, self.std, self.pixel_max)  # noqa: E731
        self.train_set = make(pool_x[train_idx], pool_y[train_idx])
        self.val_set = make(pool_x[val_idx], pool_y[val_idx])
        self.test_set = make(test_x, test_y)
        if self.val_size == 0:  # the papers' setting: train on the whole pool, monitor the test set
            self.val_set = self.test_set
        self.augmentation = None
        if self.augment_enabled and diffusion:
            self.augmentation = diffusion_augmentation(self.hflip)
        elif self.augment_enabled:
            self.augmentation = self._augmentation(self.mean, self.std)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if self._generator is None:  # load_state_dict may already have restored it
            self._generator = torch.Generator().manual_seed(self.seed + 7919 * rank)

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        sampler = EpochShuffleSampler(len(self.train_set), self.seed)
        return self._loader(self.train_set, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.val_set, self.eval_batch_size, None)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.test_set, self.eval_batch_size, None)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if self.augmentation is not None and trainer is not None and trainer.training:
            x, y = batch
            batch = (self.apply_augmentation(x), y)
        return batch

    def apply_augmentation(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the training augmentation to x: (batch, channels, height, width), normalised."""
        self._require_setup()
        return x if self.augmentation is None else self.augmentation(x, self._generator)

    def state_dict(self) -> dict:
        return {} if self._generator is None else {"augment_generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "augment_generator" in state_dict:
            self._generator = torch.Generator()
            self._generator.set_state(state_dict["augment_generator"])

    # --- helpers --------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its loaders are used")

    @property
    def split_sizes(self) -> dict[str, int]:
        """{"train": n, "val": n, "test": n} once set up."""
        self._require_setup()
        return {"train": len(self.train_set), "val": len(self.val_set), "test": len(self.test_set)}


def channel_stats(images: torch.Tensor, pixel_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of images (n, C, H, W) scaled to [0, 1]."""
    x = images.to(torch.float64) / pixel_max
    return x.mean(dim=(0, 2, 3)).numpy(), x.std(dim=(0, 2, 3)).numpy()
