"""Atomic file writes shared by checkpoints, EMA snapshots and run summaries.

Lightning-free, so that ``pynodeta.ema`` can use them.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["atomic_torch_save", "atomic_write_text", "atomic_write", "temporary_file_beside"]


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
    handle, temporary = temporary_file_beside(path)
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


def temporary_file_beside(path: str | os.PathLike) -> tuple[int, str]:
    """(an open write handle, its name): a new empty file ``.<name>.<random>.tmp`` in ``path``'s folder, with the
    permissions ``path`` should have once the file is renamed over it: those of the file it replaces, else
    those a plain ``open(path, "w")`` would give.

    ``tempfile.mkstemp`` would give 0600 whatever the umask, so every run's files would be unreadable to the
    group. Creating the file with mode 0666 lets the kernel apply the umask (and a folder's default ACL) as for
    any new file; the umask is never read, because ``os.umask`` can only be read by setting it, process-wide,
    under the feet of other threads creating files.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(tempfile.TMP_MAX):
        temporary = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            handle = os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"no unused temporary name beside {str(path)!r}")
    try:
        # replacing a file keeps its permission bits (0600 stays private, 0644 stays readable), set before any
        # byte is written; setuid/setgid are not carried over to new content
        existing = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        existing = None
    if existing is not None and stat.S_ISREG(existing) and hasattr(os, "fchmod"):
        try:
            os.fchmod(handle, stat.S_IMODE(existing) & 0o777)
        except BaseException:
            os.close(handle)
            os.unlink(temporary)
            raise
    return handle, temporary
