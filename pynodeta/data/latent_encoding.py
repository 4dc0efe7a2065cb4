"""Encoding an image folder into latent shards (``pynodeta encode``), resumable shard by shard.

The pipeline is NVlabs/edm2's for ImageNet-512 (``dataset_tool.py convert --transform=center-crop-dhariwal``
then ``dataset_tool.py encode``): each image is centre-cropped to the resolution
(:func:`~pynodeta.data.image_folder.center_crop_imagenet`) and encoded to the VAE posterior's mean and std
(:meth:`~pynodeta.diffusion.latents.LatentEncoder.encode_pixels`), written in shards of ``shard_size`` images
(:mod:`pynodeta.data.latent_shards`). A re-run with the same settings skips every shard already whole on disk;
a re-run with other settings into the same folder is refused, since the shards would mix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .image_folder import ImageFolder, read_cropped_image
from .latent_shards import (
    INDEX_NAME,
    LATENTS_FORMAT,
    files_digest,
    read_index,
    remove_stale_shard_tmp_files,
    shard_done,
    write_index,
    write_shard,
)

__all__ = ["encode_image_folder", "EncodingMismatchError"]

# the settings a resumed run must share with the first one
_SETTINGS = ("source", "files_sha256", "resolution", "shard_size", "classes", "vae", "scaling", "latent_shape")


class EncodingMismatchError(ValueError):
    """``--out`` holds an encoding made with other settings."""


class _Pixels(Dataset):
    def __init__(self, paths, resolution: int):
        self.paths, self.resolution = paths, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_cropped_image(self.paths[index], self.resolution)


def _plan(folder: ImageFolder, encoder, vae_path, resolution: int, shard_size: int) -> dict:
    factor = encoder.downsampling
    if resolution % factor:
        raise ValueError(f"resolution {resolution} must be a multiple of the VAE's downsampling factor {factor}")
    counts = [min(shard_size, len(folder) - start) for start in range(0, len(folder), shard_size)]
    return {"format": LATENTS_FORMAT, "complete": False, "source": str(folder.root.resolve()),
            "files_sha256": files_digest(p.relative_to(folder.root).as_posix() for p in folder.paths),
            "num_images": len(folder), "resolution": resolution, "shard_size": shard_size,
            "classes": list(folder.classes), **encoder.record(vae_path),
            "latent_shape": [2 * encoder.latent_channels, resolution // factor, resolution // factor],
            "shards": counts}


def _check_resume(out: Path, plan: dict) -> None:
    if not (out / INDEX_NAME).is_file():
        return
    old = read_index(out)
    changed = [key for key in _SETTINGS if old.get(key) != plan[key]]
    if changed:
        raise EncodingMismatchError(
            f"--out {str(out)!r} holds an encoding with other {', '.join(changed)} (e.g. {changed[0]} "
            f"{old.get(changed[0])!r}, now {plan[changed[0]]!r}); its shards would mix with these. Pass another --out "
            f"folder, or delete that one to encode afresh")


def encode_image_folder(data: str | Path, vae: str | Path, out: str | Path, *, resolution: int = 512,
                        shard_size: int = 1000, batch_size: int = 8, num_workers: int = 0,
                        device: torch.device | str = "cpu", scaling=None, disable: bool | None = None) -> dict:
    """Encode every image of ``data`` (``<class>/<images>``) with the VAE folder ``vae`` into shards in ``out``.

    ``scaling``: the raw → final constants recorded for training (default EDM2's for Stable Diffusion's VAE);
    ``disable``: the progress bar (None: only on a terminal). Returns the index, with ``"skipped"`` (shards
    found done) and ``"encoded"`` (shards written now).
    """
    from pynodeta.diffusion._progress import ProgressCounter
    from pynodeta.diffusion.latents import EDM2_SD_VAE_SCALING, LatentEncoder
    from pynodeta.train.run_dir import RunDirLock

    for name, value in (("resolution", resolution), ("shard_size", shard_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    folder, out = ImageFolder.scan(data), Path(out)
    encoder = LatentEncoder(vae, EDM2_SD_VAE_SCALING if scaling is None else scaling, batch_size, device)
    plan = _plan(folder, encoder, vae, resolution, shard_size)
    lock = RunDirLock(out)  # two encoders into one folder would race on its shards
    lock.acquire()
    try:
        _check_resume(out, plan)
        remove_stale_shard_tmp_files(out)  # a killed run's half-written files: no writer can be alive now
        write_index(out, plan)
        shape = tuple(plan["latent_shape"])
        pending = [n for n, count in enumerate(plan["shards"]) if not shard_done(out, n, count, shape)]
        # one loader (its workers live for the whole run) whose batches never straddle two shards
        batches = [list(range(start, min(start + batch_size, end))) for n in pending
                   for end in [n * shard_size + plan["shards"][n]] for start in range(n * shard_size, end, batch_size)]
        loader = DataLoader(_Pixels(folder.paths, resolution), batch_sampler=batches, num_workers=num_workers)
        bar = ProgressCounter(disable, "pynodeta encode (images)", total=sum(plan["shards"][n] for n in pending))
        parts, shards = [], iter(pending)
        number = next(shards, None)
        for pixels in loader:
            parts.append(encoder.encode_pixels(pixels).cpu().numpy())
            bar.update(len(pixels))
            start = number * shard_size
            if sum(len(part) for part in parts) == plan["shards"][number]:  # the shard is complete: write it
                write_shard(out, number, np.concatenate(parts), folder.labels[start:start + plan["shards"][number]])
                parts, number = [], next(shards, None)
        bar.close()
        write_index(out, plan | {"complete": True})
        skipped, encoded = len(plan["shards"]) - len(pending), len(pending)
    finally:
        lock.release()
    return plan | {"complete": True, "skipped": skipped, "encoded": encoded}

