"""The training-loop side of the learned timestep sampler (Kim et al. 2024, "Adaptive Non-uniform Timestep
Sampling"; the step of their released ``train.py``).

Every ``update_every`` (f_S = 40) iterations, around the diffusion model's optimiser step:

1. before the step, for one probe image x0, the variational-bound terms L_τ of every τ ∈ [0, T); for the
   batch, L_τ at the selected steps τ ∈ S; all with noise drawn once and kept;
2. after the step, the same terms with the same noise; ΔL_τ = L_τ(before) − L_τ(after);
3. push the probe's (ΔL_τ for all τ, Σ_τ ΔL_τ) into a queue of the last ``queue_length`` (5) updates;
4. reward each sample of the batch with Σ_{τ∈S} ΔL_τ, the drop of its bound at S, and take one REINFORCE
   step of the sampler for the timesteps it drew for that batch;
5. re-choose S: the ``num_selected`` (3) steps whose ΔL_τ best predict Σ ΔL across the queue.

Works with any loop: call ``before_optimizer_step`` after the loss is formed (or before backward) and
``after_optimizer_step`` once the model's parameters have changed. The DiffusionModule does this; so does
``benchmarks/seed004_digits.py``'s plain loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor, nn

from pynodeta.diffusion.learned_timestep_sampler import LearnedTimestepSampler, mean_over_ranks
from pynodeta.diffusion.timestep_samplers import LossAwareSampler, TimestepSampler

__all__ = ["AdaptiveTimestepUpdater", "TimestepSamplerTraining", "ddpm_vb_terms", "select_by_f_regression"]

VBTerms = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x0, t, noise) -> L_t of each sample, (batch,)


def ddpm_vb_terms(eps_model: nn.Module, schedule, num_bins: int = 256, variance: str = "fixed_small") -> VBTerms:
    """(x0, t, noise) ↦ L_t (bits/dim, (batch,)) of the current ``eps_model(t, x_t)`` under ``schedule``.

    ``variance`` is the reverse-process variance of p(x_{t−1} | x_t) in the KL: "fixed_small" (β̃_t, what
    pynodeta's ancestral sampler uses by default) or "fixed_large" (β_t, the paper's released config).
    Runs in eval mode and without gradients (the mode is restored): dropout would make "before" and "after"
    differ even with unchanged weights, and that difference would be credited to the sampler.
    """
    return _DDPMBoundTerms(eps_model, schedule, num_bins, variance)


class _DDPMBoundTerms:
    # a class rather than a closure, so that a LightningModule holding it can be pickled (ddp_spawn)
    def __init__(self, eps_model: nn.Module, schedule, num_bins: int, variance: str):
        self.eps_model, self.schedule, self.num_bins, self.variance = eps_model, schedule, num_bins, variance

    @torch.no_grad()
    def __call__(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        was_training = self.eps_model.training
        self.eps_model.eval()
        try:
            x_t = self.schedule.add_noise(x0, noise, t)
            return self.schedule.vb_terms(x0, x_t, t, self.eps_model(t, x_t), variance=self.variance,
                                          num_bins=self.num_bins)
        finally:
            self.eps_model.train(was_training)


def select_by_f_regression(features: Tensor, target: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` columns of ``features`` (rows, T) with the largest univariate F-statistic for ``target``.

    sklearn's ``SelectKBest(f_regression)``, as the released code: F_j = r_j²/(1 − r_j²)·(n − 2) with r_j the
    correlation of column j with the target. F is increasing in r² for a fixed n, so we rank by r², which
    stays finite when |r| = 1. Constant columns score 0; ties keep the lower timestep. (The paper describes
    a feature selection in general terms; with 5 rows and T columns a univariate score is what is identifiable.)
    """
    centred = features - features.mean(dim=0)
    target = target - target.mean()
    covariance = centred.T @ target
    variance = centred.pow(2).sum(dim=0) * target.pow(2).sum()
    r_squared = torch.where(variance > 0, covariance.pow(2) / variance.clamp(min=torch.finfo(features.dtype).tiny),
                            torch.zeros_like(covariance))
    order = torch.sort(r_squared, descending=True, stable=True).indices
    return order[:k].sort().values


class AdaptiveTimestepUpdater:
    """Seed 004's sampler update around the model's optimiser step (see the module docstring).

    Args:
        sampler: the ``LearnedTimestepSampler`` that draws the training timesteps.
        vb_terms: (x0, t, noise) ↦ L_t of the *current* model, (batch,); e.g. ``ddpm_vb_terms(model, schedule)``.
        update_every: f_S, iterations between sampler updates (the paper: 40).
        queue_length: how many past ΔL vectors S is chosen from (the released code: 5).
        num_selected: |S| (the paper: 3).
        probe_chunk: the T probe terms are evaluated in chunks of this many (memory).

    S starts as ``num_selected`` evenly spread steps: with no ΔL seen yet there is nothing to prefer (the
    code starts with {0, 1, 2}, the three least noisy steps) and is re-chosen once the queue has 3 rows
    (F-regression needs n − 2 >= 1 degrees of freedom; the code starts at 2, where every |r| is 1).
    """

    def __init__(self, sampler: LearnedTimestepSampler, vb_terms: VBTerms, update_every: int = 40,
                 queue_length: int = 5, num_selected: int = 3, probe_chunk: int = 250):
        T = sampler.num_timesteps
        for name, value, low in (("update_every", update_every, 1), ("queue_length", queue_length, 3),
                                 ("num_selected", num_selected, 1), ("probe_chunk", probe_chunk, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if num_selected > T:
            raise ValueError(f"num_selected must be <= T = {T}, got {num_selected}")
        self.sampler, self.vb_terms = sampler, vb_terms
        self.update_every, self.num_selected, self.probe_chunk = update_every, num_selected, probe_chunk
        self.queue: deque[tuple[Tensor, Tensor]] = deque(maxlen=queue_length)
        self.selected = torch.linspace(0, T - 1, 2 * num_selected + 1)[1::2].round().long()
        self.overhead_seconds = 0.0  # time spent in this updater (not in the sampler's per-batch draws)
        self._pending: dict | None = None

    def due(self, step: int) -> bool:
        return step % self.update_every == 0

    def _probe_terms(self, probe: Tensor, noise: Tensor) -> Tensor:
        T = self.sampler.num_timesteps
        steps = torch.arange(T, device=probe.device)
        return torch.cat([self.vb_terms(probe.expand(len(chunk), *probe.shape[1:]), chunk, noise[chunk])
                          for chunk in steps.split(self.probe_chunk)])

    def _selected_terms(self, x0: Tensor, noise: Tensor) -> Tensor:
        """L_τ for every sample and τ ∈ S, (batch, |S|); noise is (|S|, batch, ...)."""
        return torch.stack([self.vb_terms(x0, torch.full((x0.shape[0],), int(tau), device=x0.device), noise[i])
                            for i, tau in enumerate(self.selected)], dim=1)

    @torch.no_grad()
    def before_optimizer_step(self, step: int, x0: Tensor, generator: torch.Generator | None = None) -> None:
        """At an update iteration, record the bound terms of the model as it is before its step."""
        self._pending = None
        if not self.due(step):
            return
        start = time.perf_counter()
        T, batch = self.sampler.num_timesteps, x0.shape[0]
        pick = int(torch.randint(0, batch, (1,), generator=generator))
        probe = x0[pick : pick + 1]
        probe_noise = torch.randn((T, *x0.shape[1:]), generator=generator).to(x0)
        batch_noise = torch.randn((self.num_selected, *x0.shape), generator=generator).to(x0)
        self._pending = {"probe": probe, "probe_noise": probe_noise, "batch_noise": batch_noise,
                         "probe_before": self._probe_terms(probe, probe_noise),
                         "batch_before": self._selected_terms(x0, batch_noise)}
        self.overhead_seconds += time.perf_counter() - start

    def after_optimizer_step(self, x0: Tensor, t: Tensor) -> dict[str, float] | None:
        """At an update iteration, reward the draws ``t`` for batch ``x0`` and update the sampler; returns logs."""
        if self._pending is None:
            return None
        start = time.perf_counter()
        pending, self._pending = self._pending, None
        with torch.no_grad():
            probe_drop = pending["probe_before"] - self._probe_terms(pending["probe"], pending["probe_noise"])
            # under DDP each rank probed an image of its own: their mean makes one queue, one S on every rank
            probe_drop = mean_over_ranks(probe_drop)
            reward = (pending["batch_before"] - self._selected_terms(x0, pending["batch_noise"])).sum(dim=1)
        self.queue.append((probe_drop.double().cpu(), probe_drop.double().sum().cpu()))
        policy_loss = self.sampler.reinforce(x0, t, reward)
        if len(self.queue) >= 3:
            features = torch.stack([row for row, _ in self.queue])
            self.selected = select_by_f_regression(features, torch.stack([total for _, total in self.queue]),
                                                   self.num_selected)
        self.overhead_seconds += time.perf_counter() - start
        logs = {f"sampler/{key}": value for key, value in self.sampler.summary(x0).items()}
        logs.update({"sampler/policy_loss": float(policy_loss), "sampler/reward_mean": float(reward.mean()),
                     "sampler/probe_drop_sum": float(probe_drop.sum()), "sampler/overhead_s": self.overhead_seconds})
        return logs

    def state_dict(self) -> dict:
        """S, the queue and the time spent; the sampler's own state is its ``state_dict`` (saved by its owner)."""
        return {"selected": self.selected.clone(), "queue": [(row.clone(), total.clone()) for row, total in self.queue],
                "overhead_seconds": self.overhead_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.selected = state["selected"].clone()
        self.queue.clear()
        self.queue.extend((row.clone(), total.clone()) for row, total in state["queue"])
        self.overhead_seconds = state["overhead_seconds"]


class TimestepSamplerTraining:
    """What a training loop owes its timestep sampler, for any sampler: two calls per iteration.

    ``after_loss(step, x0, t, per_sample_losses)`` once the loss is formed (loss-aware samplers learn from the
    unweighted per-sample losses; the adaptive sampler records its "before" terms), and
    ``after_optimizer_step()`` once the weights changed (the adaptive sampler's update; returns its logs
    every f_S steps, else None). ``state_dict`` holds the sampler's and the updater's state.

    Args:
        sampler: any ``TimestepSampler``.
        vb_terms: (x0, t, noise) ↦ L_t of the current model; needed for the adaptive sampler only.
        updater_options: ``AdaptiveTimestepUpdater`` options (update_every, queue_length, num_selected, ...).
    """

    def __init__(self, sampler: TimestepSampler, vb_terms: VBTerms | None = None, **updater_options):
        self.sampler, self.updater = sampler, None
        if isinstance(sampler, LearnedTimestepSampler):
            if vb_terms is None:
                raise ValueError("the adaptive sampler needs vb_terms: pass ddpm_vb_terms(eps_model, schedule)")
            self.updater = AdaptiveTimestepUpdater(sampler, vb_terms, **updater_options)
        elif updater_options:
            raise ValueError(f"updater options {sorted(updater_options)} apply to the adaptive sampler only")
        self._draw: tuple[Tensor, Tensor] | None = None

    def after_loss(self, step: int, x0: Tensor, t: Tensor, per_sample_losses: Tensor) -> None:
        if isinstance(self.sampler, LossAwareSampler):
            self.sampler.update_with_local_losses(t, per_sample_losses.detach())
        if self.updater is not None:
            self.updater.before_optimizer_step(step, x0.detach())
            self._draw = (x0.detach(), t.detach())

    def after_optimizer_step(self) -> dict[str, float] | None:
        if self._draw is None:
            return None
        (x0, t), self._draw = self._draw, None
        return self.updater.after_optimizer_step(x0, t)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(),
                "updater": self.updater.state_dict() if self.updater is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if self.updater is not None:
            self.updater.load_state_dict(state["updater"])
