"""The on-disk format of encoded latents: ``.npy`` shards and one small JSON index.

A folder written by ``pynodeta encode`` holds

* ``index.json``: what was encoded and how (source folder and a digest of its file list, resolution, classes,
  the VAE and its scaling constants, the raw-latent shape), the shard list, and ``complete``;
* ``latents-00000.npy``, …: float32 (count, 2·C, h, w), the VAE posterior's mean then std along channels
  (EDM2's raw latents, NVlabs/edm2 ``dataset_tool.py encode``, which stores one ``img-mean-std-*.npy`` per image);
* ``labels-00000.npy``, …: int64 (count,), each image's class (the sorted class folders' order).

Every file is written atomically (a temporary ``.<name>.<random>.tmp`` beside it, then a rename), so a file
under its final name is whole; :func:`shard_done` also checks its header and size against the index, so a
truncated copy is encoded again rather than trusted. Reading maps the shards into memory (``mmap_mode="r"``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import atomic_write, atomic_write_text
from .errors import DatasetFileError, DatasetNotFoundError

__all__ = ["INDEX_NAME", "LATENTS_FORMAT", "shard_names", "shard_done", "write_shard", "read_index",
           "write_index", "files_digest", "LatentShards", "remove_stale_shard_tmp_files"]

INDEX_NAME = "index.json"
LATENTS_FORMAT = "pynodeta-latents-v1"
STALE_TMP_PATTERNS = (".latents-*.npy.*.tmp", ".labels-*.npy.*.tmp", f".{INDEX_NAME}.*.tmp")


def shard_names(number: int) -> tuple[str, str]:
    """(latents file, labels file) of shard ``number``."""
    return f"latents-{number:05d}.npy", f"labels-{number:05d}.npy"


def files_digest(relative_paths) -> str:
    """SHA-256 of the source's file list (relative paths, in order): a re-run on other files is refused."""
    digest = hashlib.sha256()
    for path in relative_paths:
        digest.update(str(path).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _open(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    array = np.load(path, mmap_mode="r", allow_pickle=False)  # raises on a truncated file
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise ValueError(f"holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
    return array


def shard_done(folder: Path, number: int, count: int, latent_shape: tuple[int, ...]) -> bool:
    """Whether shard ``number`` is on disk, whole and of the expected shapes (temporary files never count)."""
    latents, labels = (folder / name for name in shard_names(number))
    try:
        _open(latents, (count, *latent_shape), np.float32)
        _open(labels, (count,), np.int64)
    except (OSError, ValueError, EOFError):
        return False
    return True


def write_shard(folder: Path, number: int, latents: np.ndarray, labels: np.ndarray) -> None:
    """Write shard ``number`` atomically: labels first, then latents (the latter's presence marks it done)."""
    latents_name, labels_name = shard_names(number)
    atomic_write(folder / labels_name, lambda f: np.save(f, np.ascontiguousarray(labels, dtype=np.int64)))
    atomic_write(folder / latents_name, lambda f: np.save(f, np.ascontiguousarray(latents, dtype=np.float32)))


def remove_stale_shard_tmp_files(folder: Path) -> list[Path]:
    """Delete temporary files a killed ``pynodeta encode`` left (only while holding the folder's lock)."""
    stale = sorted({p for pattern in STALE_TMP_PATTERNS for p in folder.glob(pattern)}) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_index(folder: Path, index: dict) -> None:
    atomic_write_text(folder / INDEX_NAME, json.dumps(index, indent=1))


def read_index(folder: str | Path) -> dict:
    """The index of an encoded folder, checked for the keys and types the readers use."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    if not path.is_file():
        raise DatasetNotFoundError("encoded latents", [path], "the folder written by `pynodeta encode --out DIR`",
                                   "run `pynodeta encode --vae VAE --data IMAGES --out DIR` first")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetFileError(path, f"is not readable JSON ({error})") from error
    if not isinstance(index, dict) or index.get("format") != LATENTS_FORMAT:
        raise DatasetFileError(path, f"is not an index of `pynodeta encode` (format {LATENTS_FORMAT!r})")
    shards = index.get("shards")
    shape = index.get("latent_shape")
    if (not isinstance(shards, list) or not all(isinstance(s, int) and s > 0 for s in shards)
            or not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape)
            or not isinstance(index.get("classes"), list)):
        raise DatasetFileError(path, "has no valid 'shards' (image counts), 'latent_shape' ([2*C, h, w]) or 'classes'")
    return index


@dataclass
class LatentShards:
    """Every shard of an encoded folder, memory-mapped: ``raw(i)`` is image i's (2·C, h, w) float32 mean-and-std.

    ``labels``: (n,) int64 in memory; ``index``: the folder's index (see the module docstring).
    """

    folder: Path
    index: dict
    arrays: list[np.ndarray]
    labels: np.ndarray
    starts: np.ndarray  # first image of each shard

    @classmethod
    def open(cls, folder: str | Path) -> LatentShards:
        folder = Path(folder)
        index = read_index(folder)
        if not index.get("complete"):
            raise DatasetFileError(folder / INDEX_NAME, "describes an encoding that has not finished; run the same "
                                                        "`pynodeta encode` command again to complete it")
        shape = tuple(index["latent_shape"])
        arrays, labels = [], []
        for number, count in enumerate(index["shards"]):
            for name, expected, dtype, out in ((shard_names(number)[0], (count, *shape), np.float32, arrays),
                                               (shard_names(number)[1], (count,), np.int64, labels)):
                try:
                    out.append(_open(folder / name, expected, dtype))
                except (OSError, ValueError, EOFError) as error:
                    raise DatasetFileError(folder / name, f"is not the shard the index describes ({error}); encode "
                                                          f"again with `pynodeta encode`") from error
        labels = np.concatenate([np.asarray(a) for a in labels])
        if labels.size and (labels.min() < 0 or labels.max() >= max(len(index["classes"]), 1)):
            raise DatasetFileError(folder, f"labels must lie in [0, {len(index['classes'])}) (the classes of the "
                                           f"index), got [{labels.min()}, {labels.max()}]")
        starts = np.cumsum([0, *index["shards"][:-1]])
        return cls(folder, index, arrays, labels, starts)

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, item: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, item, side="right")) - 1
        return np.array(self.arrays[shard][item - self.starts[shard]])  # a copy: the map stays read-only
