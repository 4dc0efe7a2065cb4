"""What the FD evaluation keeps of each batch of drawn images, and how the batches of several ranks are merged.

A :class:`ScoredBlock` is one batch, scored: its features (FD), the classes asked for and those the
classifier read (conditional accuracy), its NFE and sampler time, and the images the grid will show. A
:class:`ScoreCollector` keeps the blocks of one process, folding the features into running
:class:`~pynodeta.metrics.FeatureMoments` when the FD is taken against saved statistics (50 000 × 2048
features are not held); :meth:`ScoreCollector.merged` puts the collectors of all ranks together in block
order, so that the concatenated features are those of one process.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pynodeta.metrics import FeatureMoments

__all__ = ["GRID_IMAGES", "ScoredBlock", "score_batch", "ScoreCollector"]

GRID_IMAGES = 64  # images the evaluation grid shows: the first 64 drawn


@dataclass(frozen=True)
class ScoredBlock:
    """One batch of drawn images, scored."""

    index: int                              # block number: its images are first … first + count − 1
    first: int
    count: int
    nfe: float                              # network evaluations of its sampler call
    seconds: float                          # time its sampler took
    labels: torch.Tensor | None = None      # (count,) classes asked for (class-conditional models)
    predicted: torch.Tensor | None = None   # (count,) classes the features' classifier read, when it has one
    features: torch.Tensor | None = None    # (count, dim) float64, None without a feature extractor
    grid_images: torch.Tensor | None = None  # (≤ count, C, H, W) its images among the first GRID_IMAGES, CPU


@torch.no_grad()
def score_batch(batch, index: int, first: int, seconds: float, decode=None, extractor=None) -> ScoredBlock:
    """Score a ``SampleBatch``: decode latents (``decode``), clip to the data range [-1, 1] as saving or
    quantising would, and take ``extractor``'s features (and its class reading, where it has ``classify``)."""
    images = batch.images if decode is None else decode(batch.images)  # latent runs: through the VAE
    grid = images[:max(GRID_IMAGES - first, 0)].detach().cpu() if first < GRID_IMAGES else None
    features = predicted = None
    if extractor is not None:  # on the extractor's device: Inception on the GPU that drew the images
        pixels = images.clamp(-1, 1).to(_device_of(extractor))
        features = extractor(pixels).double().cpu()
        if batch.labels is not None and hasattr(extractor, "classify"):
            predicted = extractor.classify(pixels).argmax(dim=1).cpu()
    return ScoredBlock(index, first, len(images), float(batch.nfe), seconds, batch.labels, predicted, features, grid)


def _device_of(extractor) -> torch.device:
    """Where ``extractor``'s weights are (CPU for one without any)."""
    tensors = (*extractor.parameters(), *extractor.buffers()) if isinstance(extractor, torch.nn.Module) else ()
    return tensors[0].device if tensors else torch.device("cpu")


class ScoreCollector:
    """The scored blocks of one process; features summed into moments when ``keep_features`` is False."""

    def __init__(self, keep_features: bool = True):
        self.keep_features = keep_features
        self.blocks: list[ScoredBlock] = []
        self.moments: FeatureMoments | None = None

    def add(self, block: ScoredBlock) -> None:
        if block.features is not None and not self.keep_features:
            self.moments = self.moments or FeatureMoments(block.features.shape[1])
            self.moments.add(block.features)
            block = replace(block, features=None)
        self.blocks.append(block)

    def shard(self) -> dict:
        """This process's part, as plain CPU data for ``torch.distributed.gather_object``."""
        moments = None if self.moments is None else (self.moments.count, self.moments.total, self.moments.outer)
        return {"blocks": self.blocks, "moments": moments}

    @classmethod
    def merged(cls, shards: list[dict], keep_features: bool) -> ScoreCollector:
        """One collector of every rank's shard: blocks in block order, moments summed (as an all-reduce would)."""
        merged = cls(keep_features)
        merged.blocks = sorted((block for shard in shards for block in shard["blocks"]), key=lambda b: b.index)
        for shard in shards:
            if shard["moments"] is None:
                continue
            count, total, outer = shard["moments"]
            merged.moments = merged.moments or FeatureMoments(len(total))
            merged.moments.count += count
            merged.moments.total += total
            merged.moments.outer += outer
        return merged

    # the evaluation's inputs, in block order
    def features(self) -> torch.Tensor | None:
        kept = [block.features for block in self.blocks if block.features is not None]
        return torch.cat(kept) if kept else None

    def labels(self) -> torch.Tensor | None:
        kept = [block.labels for block in self.blocks if block.labels is not None]
        return torch.cat(kept) if kept else None

    def predicted(self) -> torch.Tensor | None:
        kept = [block.predicted for block in self.blocks if block.predicted is not None]
        return torch.cat(kept) if kept else None

    def grid_images(self) -> list[torch.Tensor]:
        return [block.grid_images for block in self.blocks if block.grid_images is not None]

    def mean_nfe(self) -> float:
        return sum(block.nfe for block in self.blocks) / len(self.blocks)

    def seconds(self) -> float:
        return sum(block.seconds for block in self.blocks)
