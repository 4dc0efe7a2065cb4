"""``BlockDraw``: the evaluation's images drawn in seeded blocks, shared among ranks, cached, gathered on rank 0.

Each rank draws its blocks (:mod:`pynodeta.train.sample_blocks`: rank r takes r, r + N, …), scores them as it
goes (features, classes, NFE) and, with a :class:`~pynodeta.train.sample_cache.SampleCache`, writes each
finished block to disk and skips those already there. Rank 0 prints a progress line and, through the one
gather of :class:`~pynodeta.train.evaluation_ranks.EvaluationRanks`, receives every rank's blocks: the FD it
computes from them is that of one process drawing the same blocks (features in block order; the moments'
sums only in another order, so equal to round-off).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from .diffusion_sampling import requested_labels
from .evaluation_ranks import EvaluationRanks
from .sample_blocks import DEFAULT_BLOCK_SIZE, block_span, draw_block, rank_blocks
from .sample_cache import SampleCache
from .scored_samples import ScoreCollector, score_batch

__all__ = ["BlockDraw"]


@dataclass
class BlockDraw:
    """How ``evaluate_samples`` draws in the block scheme: block size, this process's rank, the cache."""

    block_size: int = DEFAULT_BLOCK_SIZE
    ranks: EvaluationRanks = field(default_factory=EvaluationRanks)
    cache: SampleCache | None = None
    progress_seconds: float | None = None   # rank 0 prints a line this often and at the end (None: never)
    label: str = "pynodeta evaluate"        # the progress lines' prefix
    drawn: int = 0                          # blocks drawn by the last collect (all ranks, on rank 0)
    cached: int = 0                         # blocks read from the cache by the last collect

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    def collect(self, module, num: int, sampler: str, steps: int, *, seed: int, decode=None, extractor=None,
                keep_features: bool = True, class_labels=None, guidance: float = 1.0,
                solver=None, precision: str = "32", sampler_options: dict | None = None) -> ScoreCollector | None:
        """Every block's scores, in block order, on rank 0 (None on the other ranks)."""
        def local() -> tuple[dict, int, int]:
            return self._draw_local(module, num, sampler, steps, seed, decode, extractor, keep_features,
                                    class_labels, guidance, solver, precision, sampler_options)

        gathered = self.ranks.gather(local)
        if gathered is None:
            return None
        self.drawn, self.cached = sum(drawn for _, drawn, _ in gathered), sum(cached for _, _, cached in gathered)
        return ScoreCollector.merged([shard for shard, _, _ in gathered], keep_features)

    def _draw_local(self, module, num, sampler, steps, seed, decode, extractor, keep_features, class_labels,
                    guidance, solver, precision, sampler_options) -> tuple[dict, int, int]:
        if self.cache is not None:
            self.cache.check()
        labels = requested_labels(class_labels, num, module.num_classes)
        mine = rank_blocks(num, self.block_size, self.ranks.rank, self.ranks.world_size)
        progress = _Progress(self.label, num, len(mine), self.ranks.world_size, self.progress_seconds
                             if self.ranks.is_zero else None)
        collector, drawn, cached = ScoreCollector(keep_features), 0, 0
        for block in mine:
            first, count = block_span(block, self.block_size, num)
            scored = self.cache.load(block, first, count) if self.cache is not None else None
            if scored is None:
                started = time.perf_counter()
                batch = draw_block(module, block, num=num, block_size=self.block_size, seed=seed, sampler=sampler,
                                   steps=steps, labels=labels, guidance=guidance, solver=solver,
                                   precision=precision, sampler_options=sampler_options)
                scored = score_batch(batch, block, first, time.perf_counter() - started, decode, extractor)
                if self.cache is not None:
                    self.cache.save(scored)
                drawn += 1
            else:
                cached += 1
            collector.add(scored)
            progress.update(count, drawn, cached)
        progress.finish(drawn, cached)
        return collector.shard(), drawn, cached


class _Progress:
    """Rank 0's line of images done, every ``every`` seconds, on stderr (stdout may carry --json)."""

    def __init__(self, label: str, num: int, blocks: int, world_size: int, every: float | None):
        self.label, self.num, self.blocks, self.world_size, self.every = label, num, blocks, world_size, every
        self.started = self.last = time.monotonic()
        self.images = self.done = 0

    def update(self, count: int, drawn: int, cached: int) -> None:
        self.images += count
        self.done += 1
        now = time.monotonic()
        if self.every is not None and now - self.last >= self.every:
            self.last = now
            self._print(now, drawn, cached)

    def finish(self, drawn: int, cached: int) -> None:
        if self.every is not None:
            self._print(time.monotonic(), drawn, cached)

    def _print(self, now: float, drawn: int, cached: int) -> None:
        elapsed = now - self.started
        # the other ranks draw alike: rank 0's share times the ranks estimates the whole
        images = min(self.images * self.world_size, self.num)
        left = "" if drawn == 0 or self.done == self.blocks else \
            f", about {elapsed / drawn * (self.blocks - self.done) / 60:.1f} min left"
        ranks = f" over {self.world_size} ranks" if self.world_size > 1 else ""
        print(f"{self.label}: about {images} / {self.num} images{ranks} (rank 0: block {self.done} of "
              f"{self.blocks}, {cached} from the cache), {elapsed / 60:.1f} min elapsed{left}",
              file=sys.stderr, flush=True)
