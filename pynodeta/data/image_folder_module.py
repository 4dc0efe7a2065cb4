"""``ImageFolderDataModule``: a class-labelled image folder (ImageNet's ``train/<wnid>/*.JPEG``) as diffusion
training batches, centre-cropped as EDM2 prepares ImageNet-64 (:mod:`pynodeta.data.image_folder`)."""

from __future__ import annotations

from pathlib import Path

import lightning
from torch.utils.data import DataLoader, Dataset

from .image_folder import ImageFolder, ImageFolderDataset
from .sampling import EpochShuffleSampler, stratified_split

__all__ = ["ImageFolderDataModule"]


class ImageFolderDataModule(lightning.LightningDataModule):
    """Batches ``(x, labels)`` of ``data_dir/<class>/<images>``: x (batch, 3, resolution, resolution) float32 in
    [-1, 1], labels (batch,) int64 (the sorted class folders).

    Images are decoded and cropped when a batch asks for them (``num_workers`` processes do it in parallel),
    so memory does not grow with the dataset. ``xflip``: EDM2's doubling of the data with mirror images.
    ``val_size`` images, chosen per class by ``split_seed``, are held out for validation (0: none).
    """

    def __init__(
        self,
        data_dir: str | Path = "data",          # DATA_DIR/<class>/<images>, e.g. ImageNet's train/
        resolution: int = 64,                   # centre-crop size in pixels
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 0,
        xflip: bool = False,
        seed: int = 0,
        split_seed: int = 0,
    ):
        super().__init__()
        for arg, value, low in (("resolution", resolution, 1), ("batch_size", batch_size, 1),
                                ("num_workers", num_workers, 0), ("val_size", val_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
        self.data_dir, self.resolution, self.batch_size = Path(data_dir), resolution, batch_size
        self.eval_batch_size, self.num_workers = eval_batch_size or batch_size, num_workers
        self.val_size, self.xflip, self.seed, self.split_seed = val_size, xflip, seed, split_seed
        self.folder: ImageFolder | None = None
        self.train_set = self.val_set = self.test_set = None

    @property
    def num_classes(self) -> int:
        return len(self._scan().classes)

    def _scan(self) -> ImageFolder:
        if self.folder is None:
            self.folder = ImageFolder.scan(self.data_dir)
        return self.folder

    def prepare_data(self) -> None:
        self._scan()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder = self._scan()
        if self.val_size >= len(folder):
            raise ValueError(f"val_size must be smaller than the {len(folder)} images, got {self.val_size}")
        train, val = stratified_split(folder.labels, self.val_size, self.split_seed)
        self.train_set = _subset(folder, train, self.resolution, self.xflip)
        self.val_set = _subset(folder, val, self.resolution, False) if self.val_size else None

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.train_set, self.batch_size, EpochShuffleSampler(len(self.train_set), self.seed))

    def val_dataloader(self):
        self._require_setup()
        return self._loader(self.val_set, self.eval_batch_size, None) if self.val_set is not None else []

    def _loader(self, dataset: Dataset, batch_size: int, sampler) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its loaders are used")


def _subset(folder: ImageFolder, items, resolution: int, xflip: bool) -> Dataset:
    """The images ``items`` of ``folder``, doubled with mirror images when ``xflip``."""
    picked = ImageFolder(folder.root, folder.classes, tuple(folder.paths[i] for i in items), folder.labels[items])
    return ImageFolderDataset(picked, resolution, xflip)
