"""``pynodeta evaluate --cache DIR``: every finished block's scores on disk, so that a killed 50 000-sample
evaluation resumes where it stopped.

The folder holds ``index.json``, the identity of the evaluation (the checkpoint's SHA-256, the weights, the
sampler and its steps, seed, guidance, block size, features, …), and one ``block_0000012.npz`` per finished
block: its features, its labels and classifier readings, its NFE and sampler time, and its images where they
are among the grid's first 64. Each file is written atomically, so a kill leaves whole blocks and at worst a
``.block_….tmp`` file, which is ignored. A folder whose index names another evaluation is refused: its
blocks would be other images. ``--num`` is not part of the identity: block b is the same images whatever the
count, so a 10 000-image cache is the start of a 50 000-image one (a block that held fewer images is drawn again).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_write, atomic_write_text
from .scored_samples import ScoredBlock

__all__ = ["CACHE_FORMAT", "SampleCache", "file_sha256"]

CACHE_FORMAT = "pynodeta-sample-cache-1"
_INDEX = "index.json"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read 16 MiB at a time (a few seconds for a multi-GB network)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SampleCache:
    """The scored blocks of one evaluation in ``folder``; ``identity``: JSON-able settings that fix its images."""

    def __init__(self, folder: str | os.PathLike, identity: dict):
        self.folder = Path(folder)
        self.identity = {"format": CACHE_FORMAT, **json.loads(json.dumps(identity))}  # as read back from JSON

    def check(self) -> None:
        """Refuse a folder whose index names another evaluation, else write the index if it is missing. Every rank
        calls this: all compute the same identity, so all refuse alike, and the index they write is one text."""
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"--cache {str(self.folder)!r} is a file; name a folder")
        index = self.folder / _INDEX
        # blocks looked for before the index: a rank writes the index before any block, so a block seen here
        # with no index after it is not of this evaluation (the other order would race with another rank)
        blocks_seen = any(self.folder.glob("block_*.npz"))
        if not index.exists():
            if blocks_seen:
                raise ValueError(f"--cache {str(self.folder)!r} holds blocks but no {_INDEX}, so what they are "
                                 f"cannot be checked; pass an empty folder")
            atomic_write_text(index, json.dumps(self.identity, indent=2, sort_keys=True))
            return
        try:
            cached = json.loads(index.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"--cache {str(self.folder)!r}: {_INDEX} is unreadable ({error}); pass another "
                             f"folder") from None
        differences = [f"{key}: cached {cached.get(key)!r}, now {value!r}" for key, value in self.identity.items()
                       if cached.get(key) != value]
        differences += [f"{key}: cached {cached[key]!r}, now not set" for key in cached if key not in self.identity]
        if differences:
            raise ValueError(f"--cache {str(self.folder)!r} holds the blocks of another evaluation ("
                             f"{'; '.join(differences)}); pass the same settings to resume it, or another folder")

    def path(self, index: int) -> Path:
        return self.folder / f"block_{index:07d}.npz"

    def load(self, index: int, first: int, count: int) -> ScoredBlock | None:
        """Block ``index`` if it was finished with ``count`` images, else None (to be drawn)."""
        path = self.path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as arrays:
                stored = {key: arrays[key] for key in arrays.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            return None  # unreadable (a disk fault: writes are atomic): drawn again and rewritten
        if not {"count", "nfe", "seconds"} <= set(stored) or int(stored["count"]) != count:
            return None  # not a finished block of this size: drawn again and rewritten
        tensors = {key: torch.from_numpy(stored[key]) if key in stored else None
                   for key in ("labels", "predicted", "features", "grid_images")}
        if tensors["features"] is not None:
            tensors["features"] = tensors["features"].double()
        return ScoredBlock(index, first, count, float(stored["nfe"]), float(stored["seconds"]), **tensors)

    def save(self, block: ScoredBlock) -> None:
        arrays = {"count": np.int64(block.count), "nfe": np.float64(block.nfe), "seconds": np.float64(block.seconds)}
        for key in ("labels", "predicted", "features", "grid_images"):
            value = getattr(block, key)
            if value is None:
                continue
            value = value.detach().cpu()
            if key == "features" and torch.equal(value.float().double(), value):
                value = value.float()  # every extractor's features are float32 values: exact in half the bytes
            arrays[key] = value.numpy()
        atomic_write(self.path(block.index), lambda file: np.savez(file, **arrays))
