"""Global random-number-generator state, saved in checkpoints so a resumed run draws what the
uninterrupted run would have drawn (dropout masks, random initial states, ...)."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["collect_rng_states", "restore_rng_states", "decorrelate_rank_generators"]


def collect_rng_states() -> dict:
    """The states of Python's, NumPy's and torch's global generators (CPU and every CUDA device)."""
    # Plain Python values and tensors only, so that torch.load(weights_only=True) accepts them.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Set the global generators to ``states`` from :func:`collect_rng_states`."""
    random.setstate(states["python"])
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda"])


def decorrelate_rank_generators(rank: int) -> None:
    """Give DDP rank ``rank`` streams of its own, derived from the stream every rank shares.

    Lightning seeds every rank alike (``seed_everything``), so each rank would draw the same diffusion
    noise levels and noise for its own part of the global batch, and the same dropout masks: the batch
    would hold half as many independent draws under two ranks. NVlabs/edm2's training loop seeds rank r
    with ``seed * world_size + r`` for the same reason. Rank 0 keeps the shared stream untouched (its
    run draws what a one-process run would, and it is rank 0's state that checkpoints carry); rank
    r > 0 is reseeded from one value read off a copy of the shared stream, plus r. Called at every
    train start, so a resumed DDP run is reseeded from the restored state: reproducible, although
    ranks > 0 then do not draw what they would have drawn uninterrupted.
    """
    if rank == 0:
        return
    shared = torch.Generator().set_state(torch.get_rng_state())  # a copy: the global stream is not advanced
    seed = (int(torch.randint(0, 2 ** 62, (), generator=shared)) + rank) % 2 ** 63
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
