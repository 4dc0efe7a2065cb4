"""The block scheme of sharded evaluation: image i's noise depends on the seed and on its block, nothing else.

``pynodeta evaluate --devices N`` (and ``--cache``) draws ``num`` images in blocks of ``block_size``: block b
holds images ``b·block_size … (b+1)·block_size − 1`` and its sampler, stochastic ones included, consumes a
generator of its own, seeded from (seed, b). So a block's images are the same whichever rank draws it, in
whichever order, and whether it was drawn in this process or read back from a cache: N ranks give the images
of one process (rank r draws blocks r, r + N, r + 2N, …, as edm2's ``generate_images.py`` splits its seeds).

Fit's in-training evaluation keeps its own scheme (one generator consumed batch after batch), so that its FD
figures stay comparable over time; the two schemes draw different images from the same seed.
"""

from __future__ import annotations

import numpy as np
import torch

from .diffusion_sampling import SampleBatch, generate_batches

__all__ = ["DEFAULT_BLOCK_SIZE", "block_seed", "block_generator", "block_span", "num_blocks", "rank_blocks",
           "draw_block"]

DEFAULT_BLOCK_SIZE = 64  # images per block: one sampler batch (edm2 draws 32 to 64 per GPU at 512²)


def block_seed(seed: int, block: int) -> int:
    """A 63-bit seed of block ``block`` under ``seed``: numpy's SeedSequence hashes the pair, so neighbouring
    blocks (and seeds) get unrelated streams, not the overlapping ones of ``seed + block``."""
    if seed < 0 or block < 0:
        raise ValueError(f"seed and block must be >= 0, got seed={seed}, block={block}")
    low, high = np.random.SeedSequence([seed, block]).generate_state(2, np.uint32)
    return (int(high) << 32 | int(low)) & (2 ** 63 - 1)


def block_generator(seed: int, block: int) -> torch.Generator:
    """The CPU generator of block ``block``'s noise (and of its stochastic sampler)."""
    return torch.Generator().manual_seed(block_seed(seed, block))


def num_blocks(num: int, block_size: int) -> int:
    """Blocks of ``block_size`` images that hold ``num`` images (the last one may hold fewer)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return -(-num // block_size)


def block_span(block: int, block_size: int, num: int) -> tuple[int, int]:
    """(first image, image count) of ``block`` among ``num`` images."""
    first = block * block_size
    if not 0 <= first < num:
        raise ValueError(f"block {block} of size {block_size} lies outside {num} images")
    return first, min(block_size, num - first)


def rank_blocks(num: int, block_size: int, rank: int, world_size: int) -> range:
    """The blocks rank ``rank`` of ``world_size`` draws: rank, rank + world_size, …"""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    return range(rank, num_blocks(num, block_size), world_size)


def draw_block(module, block: int, *, num: int, block_size: int, seed: int, sampler: str, steps: int,
               labels: torch.Tensor | None = None, guidance: float = 1.0, solver=None,
               precision: str = "32", sampler_options: dict | None = None) -> SampleBatch:
    """Block ``block`` of ``num`` images, drawn in one sampler call from its own generator.

    ``labels``: the class of every one of the ``num`` images (``requested_labels``), None for an
    unconditional model; the block takes its slice, so ``"all"`` cycles through the classes as one process would.
    """
    first, count = block_span(block, block_size, num)
    class_labels = None if labels is None else labels[first:first + count]
    batches = generate_batches(module, count, sampler, steps, class_labels=class_labels, guidance=guidance,
                               solver=solver, batch_size=count, generator=block_generator(seed, block),
                               precision=precision, sampler_options=sampler_options)
    return next(batches)
