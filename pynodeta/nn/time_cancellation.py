"""The warning a model gives when it is built with a layer that cancels its timestep embedding."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

__all__ = ["TimeCancellationWarning", "warn_time_cancellation"]


class TimeCancellationWarning(UserWarning):
    """A layer of a newly built model removes the time signal: the vanishing timestep embedding of Kim et al. 2024.

    A per-channel normalisation (BatchNorm, InstanceNorm, GroupNorm with G = C) right after a
    per-channel time offset subtracts exactly that offset (Kim et al. 2024, "The Disappearance of
    Timestep Embedding"). Configurations that reproduce the effect on purpose can silence it with
    ``warnings.filterwarnings("ignore", category=TimeCancellationWarning)``.
    """


def warn_time_cancellation(layers: Sequence[tuple[str, str]], fix: str, stacklevel: int = 2) -> None:
    """One TimeCancellationWarning naming the first of ``layers`` ((path, description) pairs) and ``fix``.

    ``stacklevel`` counts from the caller (1): the default 2 points at the line that built the model
    when called from its ``__init__``.
    """
    if not layers:
        return
    path, description = layers[0]
    more = f" (and {len(layers) - 1} more such layers)" if len(layers) > 1 else ""
    warnings.warn(
        f"{path}: {description} right after the time injection cancels the timestep embedding (a "
        f"per-channel normalisation subtracts the per-channel offset it adds){more}, so the network cannot "
        f"use t there; {fix}", TimeCancellationWarning, stacklevel=stacklevel + 1)
