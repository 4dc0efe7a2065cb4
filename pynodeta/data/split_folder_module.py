"""What the DataModules over a folder of labelled items share (``ImageFolderDataModule``, ``LatentDataModule``):
the arguments' checks, a per-class validation split, an epoch-seeded shuffle and the loaders."""

from __future__ import annotations

from pathlib import Path

import lightning
from torch.utils.data import DataLoader, Dataset

from .sampling import EpochShuffleSampler, stratified_split

__all__ = ["SplitFolderDataModule"]


class SplitFolderDataModule(lightning.LightningDataModule):
    """A subclass says what its folder holds (``_source``: ``len()`` and ``labels``, read once) and how a set
    of its items becomes a dataset (``_dataset(items, xflip)``); ``items_name`` words the errors."""

    items_name = "items"

    def __init__(self, data_dir: str | Path, batch_size: int, eval_batch_size: int | None, num_workers: int,
                 val_size: int, xflip: bool, seed: int, split_seed: int, **counts: int):
        super().__init__()
        checked = {"batch_size": (batch_size, 1), "num_workers": (num_workers, 0), "val_size": (val_size, 0),
                   **{name: (value, 1) for name, value in counts.items()}}
        for arg, (value, low) in checked.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
        self.data_dir, self.batch_size, self.num_workers = Path(data_dir), batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size, self.xflip, self.seed, self.split_seed = val_size, xflip, seed, split_seed
        self.train_set = self.val_set = self.test_set = None

    def _source(self):
        raise NotImplementedError

    def _dataset(self, items, xflip: bool) -> Dataset:
        raise NotImplementedError

    def prepare_data(self) -> None:
        self._source()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        source = self._source()
        if self.val_size >= len(source):
            raise ValueError(f"val_size must be smaller than the {len(source)} {self.items_name}, got {self.val_size}")
        train, val = stratified_split(source.labels, self.val_size, self.split_seed)
        self.train_set = self._dataset(train, self.xflip)
        self.val_set = self._dataset(val, False) if self.val_size else None

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.train_set, self.batch_size, EpochShuffleSampler(len(self.train_set), self.seed))

    def val_dataloader(self):
        self._require_setup()
        return self._loader(self.val_set, self.eval_batch_size, None) if self.val_set is not None else []

    def _loader(self, dataset: Dataset, batch_size: int, sampler) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its loaders are used")
