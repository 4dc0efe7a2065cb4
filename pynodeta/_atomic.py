"""Atomic file writes shared by checkpoints, EMA snapshots and run summaries.

Lightning-free, so that ``pynodeta.ema`` can use them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["atomic_torch_save", "atomic_write_text", "atomic_write"]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that either fully replaces ``path`` or leaves it untouched.

    The temporary file lives in the destination's own folder (a rename across filesystems would be
    a copy, which a crash can leave half-done), is flushed to disk, then renamed over the target;
    the folder is synced so the rename itself survives a power cut.
    """
    atomic_write(path, lambda file: torch.save(obj, file))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see the old file or the whole new one, never a part."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``: readers see
    the old file or the whole new one, and a failed ``write`` leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    if hasattr(os, "O_DIRECTORY"):
        directory_handle = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)
