"""Which weight average a ``DiffusionModule`` is evaluated with: validation samples, FD, the final summary
and, by default, ``pynodeta sample``/``evaluate``.

- ``EMAAveraging(decay)``: a classic EMA kept by the module, updated once per optimiser step;
- ``PowerEMAAveraging(sigma_rel)``: the power-function EMA profile ``sigma_rel`` tracked by the run's
  ``PowerFunctionEMACallback`` (EDM2); fit refuses to start without a callback tracking it;
- ``"none"``: the raw weights.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EMAAveraging", "PowerEMAAveraging"]


@dataclass(frozen=True)
class EMAAveraging:
    """A classic exponential moving average of the network's weights with ``decay`` per optimiser step."""

    decay: float = 0.999

    def __post_init__(self) -> None:
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not 0 < self.decay < 1:
            raise ValueError(f"decay must be a number in (0, 1) (0.999 averages about the last 1000 steps), "
                             f"got {self.decay!r}; for the raw weights pass averaging='none'")


@dataclass(frozen=True)
class PowerEMAAveraging:
    """Evaluate with the power-function EMA of relative width ``sigma_rel`` (EDM2 Sec. 3), tracked by a
    ``PowerFunctionEMACallback`` among the trainer's callbacks."""

    sigma_rel: float = 0.10

    def __post_init__(self) -> None:
        value = self.sigma_rel
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"sigma_rel must be a number in (0, 1) (EDM2 evaluates with 0.05 to 0.20), got {value!r}")
