"""Global random-number-generator state, saved in checkpoints so a resumed run draws what the
uninterrupted run would have drawn (dropout masks, random initial states, ...)."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["collect_rng_states", "restore_rng_states"]


def collect_rng_states() -> dict:
    """The states of Python's, NumPy's and torch's global generators (CPU and every CUDA device)."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Set the global generators to ``states`` from :func:`collect_rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda"])
