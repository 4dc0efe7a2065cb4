"""Atomic checkpoint files: a crash or a full disk never leaves a truncated checkpoint behind.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives
in the system temp directory (``tempfile.mkstemp()`` without ``dir``); when that is another
filesystem than the checkpoint directory, the final move is a copy, and an interrupted copy
leaves a partial file under the checkpoint's name. Here the temporary file is created in the
destination directory, flushed to disk, then renamed over the target with ``os.replace``, which
is atomic on POSIX and Windows.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from .._atomic import atomic_torch_save

__all__ = ["AtomicCheckpointIO", "atomic_torch_save"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO writing local checkpoints with :func:`atomic_torch_save`.

    Remote paths (``s3://``, ...) fall back to Lightning's own writer, whose object-store uploads
    are already all-or-nothing.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint does not take storage_options, got {storage_options!r}"
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))
