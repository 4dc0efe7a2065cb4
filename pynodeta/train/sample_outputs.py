"""The files ``pynodeta sample`` writes, checked before any work and written atomically.

Images arrive a batch at a time, so memory stays that of one batch whatever ``--num``: the PNG grid
keeps the first :data:`GRID_MAX` images only, and a ``.npy`` tensor is written into a memory-mapped
file as the batches come. A ``.pt`` file is one ``torch.save`` of all images, so it is refused above
:data:`PT_MAX_BYTES` (use ``.npy``). Every file appears under its name only when complete: a kill
or a full disk leaves the old file (or none), never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_torch_save, temporary_file_beside
from .diffusion_sampling import save_grid

__all__ = ["GRID_MAX", "PT_MAX_BYTES", "check_output_path", "check_grid_channels", "GridWriter", "TensorWriter"]

GRID_MAX = 256                  # images in a sample grid: a PNG of 40 000 digits would take 1.7 GB to render
PT_MAX_BYTES = 2 * 1024 ** 3    # a .pt output is built in memory in one piece


def check_output_path(path: str, option: str, suffixes: tuple[str, ...]) -> Path:
    """``path`` if a file can be written there with one of ``suffixes``; else ValueError naming ``option``."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path!r} must end in {' or '.join(suffixes)}")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{option} {path!r}: {str(parent)!r} is a file, not a folder")
    if not parent.exists():
        raise ValueError(f"{option} {path!r}: the folder {str(parent)!r} does not exist; create it first")
    if out.is_dir():
        raise ValueError(f"{option} {path!r} is a folder; name a file in it")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{option} {path!r}: the folder {str(parent)!r} is not writable")
    return out


def check_grid_channels(image_shape: tuple[int, ...], out: str) -> None:
    """A PNG grid shows 1- or 3-channel images; anything else (e.g. 4-channel VAE latents) is refused before
    drawing, rather than rendered as a picture that means nothing."""
    channels = image_shape[0]
    if channels not in (1, 3):
        raise ValueError(f"--out {out!r}: the network draws {channels}-channel images {tuple(image_shape)}, e.g. the "
                         f"latents of a released EDM2 ImageNet-512 model, which a PNG cannot show; pass --vae to "
                         f"decode them into pixels, or --out none --save-tensor FILE.npy to keep the latents")


class GridWriter:
    """The first ``limit`` images of a stream, saved as one PNG grid on :meth:`close`."""

    def __init__(self, path: str | os.PathLike, limit: int = GRID_MAX):
        self.path, self.limit = Path(path), limit
        self._kept: list[torch.Tensor] = []
        self._count = 0

    def add(self, images: torch.Tensor) -> None:
        room = self.limit - self._count
        if room > 0:
            self._kept.append(images[:room].detach().cpu())
            self._count += len(self._kept[-1])

    def close(self) -> Path:
        return save_grid(torch.cat(self._kept), self.path)


class TensorWriter:
    """All images of a stream as one array file: ``.npy`` filled batch by batch, or ``.pt`` at the end."""

    def __init__(self, path: str | os.PathLike, num: int, image_shape: tuple[int, ...]):
        self.path, self.shape = Path(path), (num, *image_shape)
        self._filled = 0
        self._temporary: str | None = None
        if self.path.suffix.lower() == ".pt":
            size = int(np.prod(self.shape)) * 4
            if size > PT_MAX_BYTES:
                raise ValueError(f"--save-tensor {str(path)!r}: {num} images take {size / 1024 ** 3:.1f} GiB, built in "
                                 f"memory for a .pt file; save them as .npy instead (written as they are drawn)")
            self._array = torch.empty(self.shape)
        else:
            handle, self._temporary = temporary_file_beside(self.path)  # the final file's permissions
            os.close(handle)
            self._array = np.lib.format.open_memmap(self._temporary, mode="w+", dtype=np.float32, shape=self.shape)

    def add(self, images: torch.Tensor) -> None:
        batch = images.detach().float().cpu()
        end = self._filled + len(batch)
        if isinstance(self._array, torch.Tensor):
            self._array[self._filled:end] = batch
        else:
            self._array[self._filled:end] = batch.numpy()
        self._filled = end

    def close(self) -> Path:
        if self._filled != self.shape[0]:
            raise RuntimeError(f"{self._filled} of {self.shape[0]} images were written; the file is incomplete")
        if isinstance(self._array, torch.Tensor):
            atomic_torch_save(self._array, self.path)
            return self.path
        self._array.flush()
        del self._array
        with open(self._temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(self._temporary, self.path)
        self._temporary = None
        return self.path

    def discard(self) -> None:
        """Remove the unfinished file (after a failure); nothing to do once :meth:`close` has run."""
        if self._temporary is not None and os.path.exists(self._temporary):
            os.unlink(self._temporary)
        self._temporary = None
