"""``ImageFolderDataModule``: a class-labelled image folder (ImageNet's ``train/<wnid>/*.JPEG``) as diffusion
training batches, centre-cropped as EDM2 prepares ImageNet-64 (:mod:`pynodeta.data.image_folder`)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .image_folder import ImageFolder, ImageFolderDataset
from .split_folder_module import SplitFolderDataModule

__all__ = ["ImageFolderDataModule"]


class ImageFolderDataModule(SplitFolderDataModule):
    """Batches ``(x, labels)`` of ``data_dir/<class>/<images>``: x (batch, 3, resolution, resolution) float32 in
    [-1, 1], labels (batch,) int64 (the sorted class folders).

    Images are decoded and cropped when a batch asks for them (``num_workers`` processes do it in parallel),
    so memory does not grow with the dataset. ``xflip``: EDM2's doubling of the data with mirror images.
    ``val_size`` images, chosen per class by ``split_seed``, are held out for validation (0: none).
    """

    items_name = "images"

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
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, xflip, seed, split_seed,
                         resolution=resolution)
        self.resolution = resolution
        self.folder: ImageFolder | None = None

    @property
    def num_classes(self) -> int:
        return len(self._scan().classes)

    def _scan(self) -> ImageFolder:
        if self.folder is None:
            self.folder = ImageFolder.scan(self.data_dir)
        return self.folder

    _source = _scan

    def _dataset(self, items, xflip: bool) -> Dataset:
        return _subset(self._scan(), items, self.resolution, xflip)


def _subset(folder: ImageFolder, items, resolution: int, xflip: bool) -> Dataset:
    """The images ``items`` of ``folder``, doubled with mirror images when ``xflip``."""
    picked = ImageFolder(folder.root, folder.classes, tuple(folder.paths[i] for i in items), folder.labels[items])
    return ImageFolderDataset(picked, resolution, xflip)
