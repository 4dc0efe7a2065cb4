"""The one protocol every weight average of pynodeta speaks, and the names of the averages.

The classic EMA (:class:`~pynodeta.ema.EMA`) and the power-function EMA
(:class:`~pynodeta.ema.PowerFunctionEMA`) are told about optimiser steps the same way and hand out
their averages the same way, so that training, checkpoints, ``pynodeta sample`` and
``pynodeta evaluate`` treat both alike (as NVlabs/edm2's ``phema.py`` gives its two EMA classes one
interface). An average is named by a key: ``"ema"`` (the classic EMA) or ``"sigma_rel=0.10"`` (a
tracked power-function profile); ``"none"`` means the raw training weights.
"""

from __future__ import annotations

import copy
import math
from typing import Protocol, runtime_checkable

from torch import nn

from pynodeta.nn.precision import at_least_float32

__all__ = ["WeightAverage", "float32_copy", "RAW_WEIGHTS", "POSTHOC_KEY", "sigma_rel_key", "parse_sigma_rel_key",
           "check_average_key"]

RAW_WEIGHTS = "none"  # the key of the raw (not averaged) weights
# A checkpoint whose network weights `pynodeta phema` replaced by a reconstruction says so under this key
# ({"sigma_rel", "step"}): its "raw" weights are then that average, and the default for sampling.
POSTHOC_KEY = "pynodeta_phema"
_SIGMA_REL_PREFIX = "sigma_rel="


@runtime_checkable
class WeightAverage(Protocol):
    """Averages of one network's weights, kept up to date during training."""

    def update(self, step: int) -> None:
        """Fold in the live network's weights after optimiser step ``step`` (1, 2, ...)."""

    def keys(self) -> tuple[str, ...]:
        """The averages held, e.g. ``("ema",)`` or ``("sigma_rel=0.05", "sigma_rel=0.1")``."""

    def averaged(self, key: str) -> nn.Module:
        """The network holding the average ``key``, in eval mode (the average's own copy: read it only)."""

    def state_dict(self) -> dict:
        """Everything needed to continue the averages exactly (tensors and plain data only)."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict` of an average of the same network."""


def sigma_rel_key(sigma_rel: float) -> str:
    """``0.1`` → ``"sigma_rel=0.1"``: the key of a power-function profile."""
    return f"{_SIGMA_REL_PREFIX}{float(sigma_rel):g}"


def parse_sigma_rel_key(key: str) -> float:
    """``"sigma_rel=0.10"`` → 0.1; ValueError naming the expected form otherwise."""
    text = key.strip()
    if not text.startswith(_SIGMA_REL_PREFIX):
        raise ValueError(f"{key!r} is not a power-function EMA key; expected e.g. 'sigma_rel=0.10'")
    try:
        value = float(text[len(_SIGMA_REL_PREFIX):])
    except ValueError:
        raise ValueError(f"{key!r}: the profile width after 'sigma_rel=' must be a number, e.g. 'sigma_rel=0.10'") \
            from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key!r}: sigma_rel must be a positive finite number, e.g. 'sigma_rel=0.10'")
    return value


def check_average_key(key: str, available: tuple[str, ...]) -> str:
    """``key`` in its canonical spelling if ``available`` holds it (or it is ``"none"``); else a
    ValueError listing what the run holds."""
    if key == RAW_WEIGHTS:
        return key
    canonical = sigma_rel_key(parse_sigma_rel_key(key)) if key.strip().startswith(_SIGMA_REL_PREFIX) else key
    if canonical not in available:
        held = ", ".join([*available, RAW_WEIGHTS])
        raise ValueError(f"the average {key!r} is not stored in this run (it holds: {held}); other power-function "
                         f"EMA widths are rebuilt from the run's snapshots when its phema/ folder is beside "
                         f"checkpoints/, or through `pynodeta phema`")
    return canonical


def float32_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` whose floating-point parameters are float32 at least: the copy an
    average lives in, never bf16/fp16 even when the network is held in half precision."""
    average = copy.deepcopy(module).requires_grad_(False)
    for param in average.parameters():
        if param.is_floating_point():
            param.data = param.data.to(at_least_float32(param.dtype))
    return average
