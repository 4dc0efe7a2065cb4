"""Readers for the standard on-disk formats of CIFAR-10/100, MNIST, SVHN and Tiny-ImageNet.

Each reader returns ``(images, labels)``: images (n, channels, height, width) uint8, labels (n,)
int64, and raises DatasetNotFoundError listing every missing file, the expected layout and the
download address before reading anything. A file that is there but unusable (truncated, corrupt,
tampered with, a missing key, arrays of the wrong dtype, value range or length) raises
DatasetFileError naming the file and what was expected: nothing is cast, wrapped or dropped.
CIFAR's pickles are read with a restricted unpickler (:mod:`pynodeta.data.safe_pickle`).
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetFileError, DatasetNotFoundError
from .safe_pickle import RefusedPickleGlobal, load_restricted

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


def _as_tensors(images: np.ndarray, labels: np.ndarray, source: Path | str) -> Arrays:
    """Tensors of ``images`` (already uint8) and ``labels``, whose lengths must agree."""
    if len(images) != len(labels):
        raise DatasetFileError(source, f"holds {len(images)} images but {len(labels)} labels; "
                                       f"expected one label per image")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.as_tensor(labels, dtype=torch.int64)


def _checked_labels(labels, source: Path | str, key: str, low: int, high: int) -> np.ndarray:
    """``labels`` as a 1-d int64 array, refused unless integers in ``low..high``."""
    array = np.asarray(labels)
    if array.dtype == object or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise DatasetFileError(source, f"{key!r} must be integers, got {array.dtype}")
    array = array.astype(np.int64).reshape(-1)
    if array.size and (array.min() < low or array.max() > high):
        raise DatasetFileError(source, f"{key!r} must lie in {low}..{high}, got values in "
                                       f"{array.min()}..{array.max()}")
    return array


def _checked_uint8_pixels(values, source: Path | str, key: str) -> np.ndarray:
    """``values`` as uint8 if they are integers in 0..255; a float array or wider values are refused."""
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        raise DatasetFileError(source, f"{key!r} must be 8-bit integer pixels (0..255), got dtype {array.dtype}")
    if array.dtype != np.uint8 and array.size and (array.min() < 0 or array.max() > 255):
        raise DatasetFileError(source, f"{key!r} pixels must lie in 0..255, got {array.min()}..{array.max()}")
    return array.astype(np.uint8, copy=False)


# --- CIFAR: python pickles of {b"data": (n, 3072) uint8 in R,G,B planes, b"labels": [...]} ------
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_LAYOUT = "{root}/{folder}/ with {files} (the python version of the dataset, as extracted)"


def _read_cifar_pickles(paths: list[Path], label_key: str, num_classes: int) -> Arrays:
    images, labels = [], []
    for path in paths:
        entry = _load_cifar_batch(path, label_key)
        data = _checked_uint8_pixels(entry["data"], path, "data")
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetFileError(path, f"'data' must have shape (n, 3072), got {data.shape}")
        batch_labels = _checked_labels(entry[label_key], path, label_key, 0, num_classes - 1)
        _as_tensors(data, batch_labels, path)  # one label per image, in every file
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return _as_tensors(np.concatenate(images), np.concatenate(labels), paths[0].parent)


def _load_cifar_batch(path: Path, label_key: str) -> dict:
    expected = f"a CIFAR python batch (a pickled dict with 'data' and {label_key!r})"
    try:
        with path.open("rb") as f:
            entry = load_restricted(f)  # written by Python 2: keys are bytes
    except RefusedPickleGlobal as error:
        raise DatasetFileError(path, f"the pickle names {error}, which a CIFAR batch never holds; refusing to "
                                     f"load it (the file was altered or is not {expected})") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, UnicodeDecodeError) as error:
        raise DatasetFileError(path, f"truncated or not {expected} ({type(error).__name__}: {error})") from error
    if not isinstance(entry, dict):
        raise DatasetFileError(path, f"holds a {type(entry).__name__}; expected {expected}")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [k for k in ("data", label_key) if k not in entry]
    if missing:
        raise DatasetFileError(path, f"has no {' and no '.join(map(repr, missing))} entry; expected {expected}")
    return entry


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
    return _read_cifar_pickles([folder / n for n in names], "labels", num_classes=10)


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
    return _read_cifar_pickles([folder / ("train" if train else "test")], "fine_labels", num_classes=100)


# --- MNIST: IDX files (big-endian header: 0, 0, dtype code, ndim, then ndim uint32 sizes) --------
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (LeCun's format), gzip-compressed when the name ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DatasetFileError(path, f"cannot be read as {'gzip-compressed ' if opener is gzip.open else ''}"
                                     f"IDX data ({type(error).__name__}: {error})") from error
    if len(raw) < 4:
        raise DatasetFileError(path, f"has {len(raw)} bytes, shorter than the 4-byte IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetFileError(path, f"is not an unsigned-byte IDX file (header {raw[:4].hex()}, "
                                     f"expected 0000 08 <ndim>)")
    if len(raw) < 4 + 4 * ndim:
        raise DatasetFileError(path, f"is truncated inside its header: {ndim} dimensions need "
                                     f"{4 + 4 * ndim} bytes, the file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetFileError(path, f"holds {data.size} bytes of data, its header says shape {shape}")
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
    if images.ndim != 3:
        raise DatasetFileError(found[images_name], f"holds shape {images.shape}; expected (n, height, width)")
    if labels.ndim != 1:
        raise DatasetFileError(found[labels_name], f"holds shape {labels.shape}; expected (n,)")
    if len(labels) != len(images):
        raise DatasetFileError(found[labels_name], f"holds {len(labels)} labels but {found[images_name]} "
                                                   f"holds {len(images)} images; expected one label per image")
    return _as_tensors(images[:, None], _checked_labels(labels, found[labels_name], "labels", 0, 9),
                       found[labels_name])


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
    path = Path(root) / ("train_32x32.mat" if train else "test_32x32.mat")
    expected = "a MATLAB file with X (32, 32, 3, n) uint8 and y (n, 1) in 1..10"
    try:
        mat = loadmat(path)
    except Exception as error:  # noqa: BLE001 - scipy raises ValueError, TypeError, OSError, MatReadError...
        raise DatasetFileError(path, f"cannot be read as {expected} ({type(error).__name__}: {error})") from error
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise DatasetFileError(path, f"has no {' and no '.join(missing)} variable; expected {expected}")
    pixels = _checked_uint8_pixels(mat["X"], path, "X")
    if pixels.ndim != 4 or pixels.shape[:3] != (32, 32, 3):
        raise DatasetFileError(path, f"'X' has shape {pixels.shape}; expected (32, 32, 3, n)")
    images = np.transpose(pixels, (3, 2, 0, 1))  # (32, 32, 3, n) -> (n, 3, 32, 32)
    labels = _checked_labels(mat["y"], path, "y", 1, 10)
    return _as_tensors(images, np.where(labels == 10, 0, labels), path)


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
    files = _tiny_train_files(folder, wnids, index) if train else _tiny_val_files(folder, index)
    if not files:
        raise DatasetNotFoundError(
            "Tiny-ImageNet",
            [folder / ("train" if train else "val")],
            "at least one JPEG per split",
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        )
    images = np.stack([_read_rgb(path) for path, _ in files])
    return _as_tensors(images, np.array([label for _, label in files], dtype=np.int64), folder)


def _tiny_train_files(folder: Path, wnids: list[str], index: dict[str, int]) -> list[tuple[Path, int]]:
    files = []
    for wnid in wnids:
        found = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not found:  # a class without images would silently shift nothing but vanish from training
            raise DatasetFileError(folder / "wnids.txt", f"lists {wnid!r}, but train/{wnid}/images/ holds no "
                                                         f"JPEG; expected every listed class to have images")
        files.extend((path, index[wnid]) for path in found)
    return files


def _tiny_val_files(folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    annotations = folder / "val" / "val_annotations.txt"
    files = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetFileError(annotations, f"line {number} is {line!r}; expected '<image name>\\t<wnid>...'")
        name, wnid = fields[:2]
        if wnid not in index:
            raise DatasetFileError(annotations, f"line {number} names {wnid!r}, which is not in wnids.txt")
        files.append((folder / "val" / "images" / name, index[wnid]))
    on_disk = {p.name for p in (folder / "val" / "images").glob("*.JPEG")}
    listed = {path.name for path, _ in files}
    if on_disk != listed or len(listed) != len(files):
        raise DatasetFileError(annotations, f"labels {len(files)} images ({len(listed)} distinct) but val/images/ "
                               f"holds {len(on_disk)} JPEGs; unlabelled: {sorted(on_disk - listed)[:5]}, "
                               f"missing: {sorted(listed - on_disk)[:5]}; expected one line per image")
    return files


def _read_rgb(path: Path, size: int = 64) -> np.ndarray:
    """One JPEG as (3, size, size) uint8; a few Tiny-ImageNet images are greyscale."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise ImportError("reading Tiny-ImageNet's JPEGs needs Pillow: pip install pillow") from error

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:  # PIL's decode errors
        raise DatasetFileError(path, f"is not a readable JPEG image ({type(error).__name__}: {error})") from error
    if array.shape[:2] != (size, size):
        raise DatasetFileError(path, f"is {array.shape[1]}x{array.shape[0]}, expected {size}x{size}")
    return array.transpose(2, 0, 1)
