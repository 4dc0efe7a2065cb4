"""Seeded splits and epoch-seeded shuffling shared by every DataModule."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["stratified_split", "EpochShuffleSampler"]


def stratified_split(labels: np.ndarray, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with each class's share preserved as far as sizes allow.

    Shuffle with ``seed``, rank every sample within its class, then hold out the samples of lowest
    within-class quantile: every class loses the same fraction, rounded, and any sizes work
    (unlike scikit-learn's splitter, which needs n_holdout >= number of classes).

    Returns two sorted int64 index arrays.
    """
    n = len(labels)
    if not 0 <= n_holdout < n:
        raise ValueError(f"the held-out size must be in [0, {n}) for {n} samples, got {n_holdout}")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = np.asarray(labels)[order]
    _, inverse, counts = np.unique(shuffled, return_inverse=True, return_counts=True)
    by_class = np.argsort(inverse, kind="stable")  # shuffled order kept within each class
    class_start = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.float64)
    rank[by_class] = np.arange(n) - class_start[inverse[by_class]]  # rank within its class
    quantile = (rank + 0.5) / counts[inverse]
    by_quantile = order[np.argsort(quantile, kind="stable")]
    return np.sort(by_quantile[n_holdout:]), np.sort(by_quantile[:n_holdout])


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch, a pure function of (seed, epoch).

    Lightning calls ``set_epoch`` at the start of every epoch, so a run resumed at epoch k sees the
    same order as the uninterrupted run (a DataLoader ``generator`` would restart its stream).
    """

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
