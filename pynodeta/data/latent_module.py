"""``LatentDataModule``: the shards of ``pynodeta encode`` as training batches of final latents and class labels.

As NVlabs/edm2 trains on latents (``training/training_loop.py``): the dataset holds each image's raw latents
(the VAE posterior's mean and std, :mod:`pynodeta.data.latent_shards`), and every time a batch reaches the
device a fresh posterior sample is drawn and scaled, ``encode_latents`` (:func:`pynodeta.diffusion.latents.
draw_latents`), so the network sees (batch, C, h, w) at σ_data = 0.5. ``xflip`` is EDM2's (``training/
dataset.py``): the dataset is doubled, the second half mirrored along the width (the stored mean and std alike).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .image_folder import flipped_index
from .latent_shards import LatentShards
from .split_folder_module import SplitFolderDataModule

__all__ = ["LatentDataset", "LatentDataModule"]


class LatentDataset(Dataset):
    """Items ``(raw latents (2·C, h, w) float32, label int64)`` of the images ``items`` (default all) of
    ``shards``, doubled with mirror images when ``xflip``."""

    def __init__(self, shards: LatentShards, items: np.ndarray | None = None, xflip: bool = False):
        self.shards, self.xflip = shards, bool(xflip)
        self.items = np.arange(len(shards)) if items is None else np.asarray(items, dtype=np.int64)
        self.labels = torch.from_numpy(shards.labels[self.items])

    def __len__(self) -> int:
        return len(self.items) * (2 if self.xflip else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw, flip = flipped_index(index, len(self.items), self.xflip)
        latents = torch.from_numpy(self.shards.raw(int(self.items[raw])))
        return (latents.flip(-1) if flip else latents), self.labels[raw]


class LatentDataModule(SplitFolderDataModule):
    """Training (and optionally validation) batches ``(x, labels)`` from a folder of ``pynodeta encode``.

    x: (batch, C, h, w) float32 final latents, a new posterior sample each time (EDM2's ``encode_latents``);
    labels: (batch,) int64 classes (the sorted class folders). Outside a Trainer the loaders yield the raw
    latents (batch, 2·C, h, w); turn them into x with :meth:`final_latents`. Validation batches use the
    posterior mean (no noise), so that epochs are compared on the same latents.
    """

    items_name = "encoded images"

    def __init__(
        self,
        data_dir: str | Path = "latents",       # the --out folder of `pynodeta encode`
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 0,                      # images held out for validation (0: no validation)
        xflip: bool = False,                    # EDM2's x-flip: double the data with mirror images
        seed: int = 0,                          # shuffling and the posterior samples
        split_seed: int = 0,                    # which images go to validation
        vae: str | None = None,                 # the VAE folder to decode with, if not where the index says
    ):
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, xflip, seed, split_seed)
        self.vae = vae
        self.shards: LatentShards | None = None
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None
        self._decoder = None

    # --- what the data is ---------------------------------------------------------------------
    def _open(self) -> LatentShards:
        if self.shards is None:
            self.shards = LatentShards.open(self.data_dir)
        return self.shards

    @property
    def scaling(self):
        from pynodeta.diffusion.latents import LatentScaling

        return LatentScaling.from_dict(self._open().index["scaling"])

    @property
    def latent_record(self) -> dict:
        """{"vae", "scaling"}: what a run keeps to decode its samples (the DiffusionModule saves it)."""
        index = self._open().index
        return {"vae": str(self.vae) if self.vae is not None else index["vae"], "scaling": index["scaling"]}

    @property
    def num_classes(self) -> int:
        return len(self._open().index["classes"])

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the final latents (half the stored channels)."""
        channels, height, width = self._open().index["latent_shape"]
        return channels // 2, height, width

    # --- the split (SplitFolderDataModule) ------------------------------------------------------
    _source = _open

    def _dataset(self, items, xflip: bool) -> Dataset:
        return LatentDataset(self._open(), items, xflip)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        raw, labels = batch
        trainer = self.trainer
        return self.final_latents(raw, sample=trainer is None or trainer.training), labels

    def final_latents(self, raw: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Raw latents (batch, 2·C, h, w) → final latents (batch, C, h, w): a posterior sample (``sample``) or
        the posterior mean, scaled by the index's constants."""
        from pynodeta.diffusion.latents import draw_latents

        if not sample:
            return self.scaling.scale_latents(raw.chunk(2, dim=1)[0])
        return draw_latents(raw, self.scaling, self._noise_generator(raw.device))

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self._generator = torch.Generator(device).manual_seed(self.seed + 7919 * rank)
            if self._generator_state is not None:  # restored from a checkpoint before the device was known
                self._generator.set_state(self._generator_state)
                self._generator_state = None
        return self._generator

    def state_dict(self) -> dict:
        return {} if self._generator is None else {"latent_generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "latent_generator" in state_dict:
            self._generator, self._generator_state = None, state_dict["latent_generator"]

    # --- decoding, for sample grids -------------------------------------------------------------
    def decode_for_display(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents → images in [-1, 1] (n, 3, H, W) through the index's VAE (loaded on first use)."""
        if self._decoder is None:
            from pynodeta.diffusion.latents import LatentEncoder

            record = self.latent_record
            self._decoder = LatentEncoder(record["vae"], self.scaling, device=latents.device)
        return self._decoder.decode_to_unit_range(latents)
