"""Class-labelled image folders (ImageNet's ``train/<wnid>/*.JPEG``), centre-cropped as EDM2 prepares ImageNet.

``ImageFolder(root)`` lists every image under ``root/<class>/`` (sub-folders included); classes are the sorted
names of the folders that hold at least one image and a label is its class's index in that order, as
NVlabs/edm2 ``dataset_tool.py`` does (``open_image_folder``: labels from the sorted top-level folder names of
the image files found). A folder without images (empty, or holding only other files) gets no class index, so
the classes after it keep consecutive labels. torchvision's ``ImageFolder`` gives the same labels where every
folder holds an image and refuses a folder without one. Images are ordered by their path relative to ``root``.

``center_crop_imagenet`` is EDM2's ``--transform=center-crop-dhariwal``, the ADM crop (openai/guided-diffusion
``image_datasets.py``, ``center_crop_arr``): halve with a box filter while the short side is at least twice the
resolution, resize bicubic so the short side equals it, then cut the centre square.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetFileError, DatasetNotFoundError

__all__ = ["ImageFolder", "center_crop_imagenet", "read_cropped_image", "ImageFolderDataset", "flipped_index"]


def _image_extensions() -> set[str]:
    from PIL import Image

    return {extension.lower() for extension in Image.registered_extensions()}


def center_crop_imagenet(image, resolution: int) -> np.ndarray:
    """EDM2's / ADM's centre crop of a PIL image to (resolution, resolution, 3) uint8 (HWC)."""
    from PIL import Image

    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1 (pixels per side), got {resolution!r}")
    image = image.convert("RGB")
    while min(*image.size) >= 2 * resolution:  # cheap anti-aliasing first: box-filtered halvings
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = resolution / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    top, left = (array.shape[0] - resolution) // 2, (array.shape[1] - resolution) // 2
    return array[top:top + resolution, left:left + resolution].copy()  # contiguous and writable


def read_cropped_image(path: str | Path, resolution: int) -> torch.Tensor:
    """One image file as (3, resolution, resolution) uint8, centre-cropped by :func:`center_crop_imagenet`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = center_crop_imagenet(image, resolution)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:  # PIL's decode errors
        raise DatasetFileError(path, f"is not a readable image ({type(error).__name__}: {error})") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class ImageFolder:
    """The images of ``root/<class>/...`` with their labels.

    Attributes: ``root``; ``classes``: the sorted names of the class folders that hold at least one image;
    ``paths``: every image, ordered by its path relative to ``root``; ``labels``: (n,) int64, the index in
    ``classes`` of each image's folder.
    """

    root: Path
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray

    @classmethod
    def scan(cls, root: str | Path) -> ImageFolder:
        root = Path(root)
        if not root.is_dir():
            raise DatasetNotFoundError("image folder", [root], "root/<class name>/<image files> (e.g. ImageNet's "
                                       "train/<wnid>/*.JPEG)", "your own images")
        extensions = _image_extensions()
        folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
        loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        if loose:
            raise DatasetFileError(root, f"holds images outside class folders ({', '.join(loose[:3])}); put every "
                                         f"image in root/<class name>/ (one folder for unlabelled data)")
        images = {name: _images_under(root, name, extensions) for name in folders}
        # edm2 numbers the top-level folders of the images it found: a folder without images is no class
        classes = [name for name in folders if images[name]]
        if not classes:
            raise DatasetNotFoundError("image folder", [root / "<class>" / "<image>"],
                                       "root/<class name>/<image files>", "your own images")
        found = sorted((relative, label) for label, name in enumerate(classes) for relative in images[name])
        return cls(root, tuple(classes), tuple(root / relative for relative, _ in found),
                   np.array([label for _, label in found], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.paths)


def _images_under(root: Path, folder: str, extensions: set[str]) -> list[str]:
    """The image files under ``root/folder`` (sub-folders included), as paths relative to ``root``."""
    return [Path(parent, name).relative_to(root).as_posix() for parent, _, files in os.walk(root / folder)
            for name in files if Path(name).suffix.lower() in extensions]


def flipped_index(index: int, size: int, xflip: bool) -> tuple[int, bool]:
    """EDM2's x-flip (``training/dataset.py``): ``xflip`` doubles the dataset, items ``size..2·size-1`` being the
    mirror images of ``0..size-1``. Returns (stored item, whether to flip it)."""
    if not 0 <= index < (2 * size if xflip else size):
        raise IndexError(f"index {index} out of range for {2 * size if xflip else size} items")
    return (index - size, True) if index >= size else (index, False)


class ImageFolderDataset(Dataset):
    """An :class:`ImageFolder` read lazily: item ``(x, label)`` with x (3, resolution, resolution) float32 in
    [-1, 1] (p/127.5 − 1, the diffusion data scale) and label int64; ``xflip`` doubles it with mirror images."""

    def __init__(self, folder: ImageFolder, resolution: int, xflip: bool = False):
        self.folder, self.resolution, self.xflip = folder, resolution, bool(xflip)
        self.labels = torch.from_numpy(folder.labels)

    def __len__(self) -> int:
        return len(self.folder) * (2 if self.xflip else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw, flip = flipped_index(index, len(self.folder), self.xflip)
        pixels = read_cropped_image(self.folder.paths[raw], self.resolution)
        if flip:
            pixels = pixels.flip(-1)
        return pixels.to(torch.float32) / 127.5 - 1, self.labels[raw]
