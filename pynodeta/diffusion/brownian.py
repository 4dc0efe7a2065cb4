"""``BrownianNoise``: the increments of one Brownian path W(σ), drawn lazily and seeded by a torch.Generator.

It stands in for k-diffusion's ``BrownianTreeNoiseSampler`` (a ``torchsde.BrownianTree``), which
``sample_dpmpp_sde`` needs: its two noise draws per step lie on nested intervals, [σ_s, σ_i] and
[σ_{i+1}, σ_i], and must be correlated as increments of one path, not independent. W is known at a sorted
set of points; a new point between two known ones is drawn from the Brownian bridge, a new point outside
them from an independent increment. Differences from torchsde's tree:

- the values depend on the order of the queries (torchsde's are a function of the seed and t alone); a
  sampler queries in a fixed order, so the same generator state still gives the same samples;
- one path per tensor element, all drawn from one ``generator`` (torchsde takes a seed, or one per sample);
- ``forget_above(σ)`` drops points a sampler moving down in σ will not need, so memory stays that of a
  few tensors (torchsde caches by its own policy and snaps query times to a tolerance).
"""

from __future__ import annotations

import bisect
import math

import torch

from .._random import randn

__all__ = ["BrownianNoise"]


class BrownianNoise:
    """``noise(sigma, sigma_next)`` = (W(max) − W(min))/√|σ − σ_next|, standard normal for each element.

    Over intervals that do not overlap the draws are independent (an interval touching no known point
    gives exactly the generator's next standard-normal draw); over nested or overlapping ones they are
    correlated as Brownian increments are: corr = √(|shared length|²/(|I₁|·|I₂|)).
    """

    def __init__(self, like: torch.Tensor, generator: torch.Generator | None = None):
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device
        self.generator = generator
        self.times: list[float] = []  # increasing
        self.values: list[torch.Tensor] = []

    def _draw(self) -> torch.Tensor:
        return randn(self.shape, generator=self.generator, dtype=self.dtype, device=self.device)

    def value(self, t: float) -> torch.Tensor:
        """W(t), drawn given the points already known (the first point is W = 0)."""
        where = bisect.bisect_left(self.times, t)
        if where < len(self.times) and self.times[where] == t:
            return self.values[where]
        if not self.times:
            value = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        elif where == 0:  # below every known point: W(t) = W(t₀) − √(t₀ − t)·z
            value = self.values[0] - math.sqrt(self.times[0] - t) * self._draw()
        elif where == len(self.times):  # above: W(t) = W(t_last) + √(t − t_last)·z
            value = self.values[-1] + math.sqrt(t - self.times[-1]) * self._draw()
        else:  # between a < t < b: the bridge, mean linear in t, variance (t − a)(b − t)/(b − a)
            a, b = self.times[where - 1], self.times[where]
            w_a, w_b = self.values[where - 1], self.values[where]
            mean = torch.lerp(w_a, w_b, (t - a) / (b - a))
            value = mean + math.sqrt((t - a) * (b - t) / (b - a)) * self._draw()
        self.times.insert(where, t)
        self.values.insert(where, value)
        return value

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        low, high = min(sigma, sigma_next), max(sigma, sigma_next)
        if not high > low:
            raise ValueError(f"the noise interval must have length > 0, got [{low:.6g}, {high:.6g}]")
        # the lower end first: a fresh step (high already known) then draws W(low) = W(high) − √Δ·z, i.e. noise z
        w_low = self.value(low)
        return (self.value(high) - w_low) / math.sqrt(high - low)

    def forget_above(self, sigma: float) -> None:
        """Drop the points above ``sigma``: a sampler past σ queries nothing above it again."""
        keep = bisect.bisect_right(self.times, sigma)
        del self.times[keep:], self.values[keep:]
