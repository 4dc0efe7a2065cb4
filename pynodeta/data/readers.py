"""Readers for the standard on-disk formats of CIFAR-10/100, MNIST, SVHN and Tiny-ImageNet.

Each reader returns ``(images, labels)``: images (n, channels, height, width) uint8, labels (n,)
int64, and raises DatasetNotFoundError listing every missing file, the expected layout and the
download address before reading anything.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetNotFoundError

__all__ = [
    "check_cifar10",
    "read_cifar10",
    "check_cifar100",
    "read_cifar100",
    "check_mnist",
    "read_mnist",
    "read_idx",
    "check_svhn",
    "read_svhn",
    "check_tiny_imagenet",
    "read_tiny_imagenet",
]

Arrays = tuple[torch.Tensor, torch.Tensor]


def _require(dataset: str, paths: list[Path], layout: str, download: str) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DatasetNotFoundError(dataset, missing, layout, download)


def _as_tensors(images: np.ndarray, labels) -> Arrays:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)), torch.as_tensor(
        np.asarray(labels, dtype=np.int64)
    )


# --- CIFAR: python pickles of {b"data": (n, 3072) uint8 in R,G,B planes, b"labels": [...]} ------
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_LAYOUT = "{root}/{folder}/ with {files} (the python version of the dataset, as extracted)"


def _read_cifar_pickles(paths: list[Path], label_key: str) -> Arrays:
    images, labels = [], []
    for path in paths:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="bytes")  # written by Python 2: keys are bytes
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return _as_tensors(np.concatenate(images), labels)


def check_cifar10(root: str | Path) -> None:
    folder = Path(root) / "cifar-10-batches-py"
    _require(
        "CIFAR-10",
        [folder / name for name in CIFAR10_FILES],
        CIFAR_LAYOUT.format(root=root, folder=folder.name, files=", ".join(CIFAR10_FILES)),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it into data_dir)",
    )


def read_cifar10(root: str | Path, train: bool) -> Arrays:
    """CIFAR-10 from ``root/cifar-10-batches-py/{data_batch_1..5, test_batch}``."""
    check_cifar10(root)
    folder = Path(root) / "cifar-10-batches-py"
    names = CIFAR10_FILES[:5] if train else ["test_batch"]
    return _read_cifar_pickles([folder / n for n in names], "labels")


def check_cifar100(root: str | Path) -> None:
    folder = Path(root) / "cifar-100-python"
    _require(
        "CIFAR-100",
        [folder / "train", folder / "test"],
        CIFAR_LAYOUT.format(root=root, folder=folder.name, files="train, test"),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract it into data_dir)",
    )


def read_cifar100(root: str | Path, train: bool) -> Arrays:
    """CIFAR-100 (the 100 fine labels) from ``root/cifar-100-python/{train, test}``."""
    check_cifar100(root)
    folder = Path(root) / "cifar-100-python"
    return _read_cifar_pickles([folder / ("train" if train else "test")], "fine_labels")


# --- MNIST: IDX files (big-endian header: 0, 0, dtype code, ndim, then ndim uint32 sizes) --------
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (LeCun's format), gzip-compressed when the name ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} bytes of data, its header says shape {shape}")
    return data.reshape(shape).copy()  # frombuffer is read-only; torch wants writable memory


def _find_mnist_file(root: Path, name: str) -> Path | None:
    for folder in (root / "MNIST" / "raw", root):  # torchvision's layout, or the files directly
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def check_mnist(root: str | Path) -> dict[str, Path]:
    """The paths of the four IDX files, found in ``root/MNIST/raw/`` or ``root/``."""
    root = Path(root)
    names = [*MNIST_FILES[True], *MNIST_FILES[False]]
    found = {name: _find_mnist_file(root, name) for name in names}
    if any(path is None for path in found.values()):
        raise DatasetNotFoundError(
            "MNIST",
            [root / "MNIST" / "raw" / n for n, p in found.items() if p is None],
            f"{root}/MNIST/raw/ or {root}/ with {', '.join(names)} (each may also end in .gz)",
            "https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/)",
        )
    return found


def read_mnist(root: str | Path, train: bool) -> Arrays:
    """MNIST from the four IDX files in ``root/MNIST/raw/`` or ``root/`` (optionally .gz)."""
    found = check_mnist(root)
    images_name, labels_name = MNIST_FILES[train]
    images, labels = read_idx(found[images_name]), read_idx(found[labels_name])
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"MNIST files disagree: images {images.shape}, labels {labels.shape}")
    return _as_tensors(images[:, None], labels)


# --- SVHN: MATLAB files with X (32, 32, 3, n) uint8 and y (n, 1) in 1..10, where 10 means digit 0 -
def check_svhn(root: str | Path) -> None:
    root = Path(root)
    _require(
        "SVHN",
        [root / "train_32x32.mat", root / "test_32x32.mat"],
        f"{root}/train_32x32.mat and {root}/test_32x32.mat (format 2, cropped digits)",
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat and .../test_32x32.mat",
    )


def read_svhn(root: str | Path, train: bool) -> Arrays:
    """SVHN (cropped digits) from ``root/train_32x32.mat`` and ``root/test_32x32.mat``."""
    from scipy.io import loadmat

    check_svhn(root)
    root = Path(root)
    mat = loadmat(root / ("train_32x32.mat" if train else "test_32x32.mat"))
    images = np.transpose(mat["X"], (3, 2, 0, 1))  # (32, 32, 3, n) -> (n, 3, 32, 32)
    labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    return _as_tensors(images, np.where(labels == 10, 0, labels))


# --- Tiny-ImageNet: JPEG folders; the validation set (with labels) serves as the test set ---------
def check_tiny_imagenet(root: str | Path) -> None:
    folder = Path(root) / "tiny-imagenet-200"
    _require(
        "Tiny-ImageNet",
        [
            folder / "wnids.txt",
            folder / "train",
            folder / "val" / "images",
            folder / "val" / "val_annotations.txt",
        ],
        f"{folder}/ with wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt",
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip (unzip it into data_dir)",
    )


def read_tiny_imagenet(root: str | Path, train: bool) -> Arrays:
    """Tiny-ImageNet-200 from ``root/tiny-imagenet-200/``; labels index the sorted wnids.txt ids.

    train: ``train/<wnid>/images/*.JPEG``; test: ``val/images/*.JPEG`` labelled by
    ``val/val_annotations.txt`` (the official test split has no labels). Images become RGB 64x64.
    """
    check_tiny_imagenet(root)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = sorted(line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip())
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if train:
        files = [
            (p, index[w]) for w in wnids for p in sorted((folder / "train" / w / "images").glob("*.JPEG"))
        ]
    else:
        files = []
        for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
            if line.strip():
                name, wnid = line.split("\t")[:2]
                if wnid not in index:
                    raise ValueError(f"val_annotations.txt names {wnid!r}, which is not in wnids.txt")
                files.append((folder / "val" / "images" / name, index[wnid]))
    if not files:
        raise DatasetNotFoundError(
            "Tiny-ImageNet",
            [folder / ("train" if train else "val")],
            "at least one JPEG per split",
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        )
    return _as_tensors(np.stack([_read_rgb(path) for path, _ in files]), [label for _, label in files])


def _read_rgb(path: Path, size: int = 64) -> np.ndarray:
    """One JPEG as (3, size, size) uint8; a few Tiny-ImageNet images are greyscale."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("reading Tiny-ImageNet's JPEGs needs Pillow: pip install pillow") from error

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.shape[:2] != (size, size):
        raise ValueError(f"{path} is {array.shape[1]}x{array.shape[0]}, expected {size}x{size}")
    return array.transpose(2, 0, 1)
