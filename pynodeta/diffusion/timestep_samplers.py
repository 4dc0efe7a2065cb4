"""Timestep samplers for diffusion training: which t each sample of a batch is trained at, and its loss weight.

Every sampler has Improved-DDPM's ``resample.py`` signature::

    t, weights = sampler.sample(batch_size, device=None, generator=None, x0=None)
    loss = (weights * per_sample_loss).mean()

``t`` are int64 timesteps in [0, T), shape (batch,). An importance sampler's weights 1/(T p_t) keep the
estimate of the uniform-t objective unbiased; a sampler that changes the objective on purpose (SpeeD's
weighting, the learned sampler of Kim et al. 2024) returns its own weights and says so. Loss-aware samplers learn
from ``update_with_local_losses(t, losses)`` (gathered over DDP ranks) or ``update_with_all_losses``.
Each sampler's ``state_dict()`` holds everything it learned, so a checkpoint resumes it exactly.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "TIMESTEP_SAMPLERS",
    "LossAwareSampler",
    "LossSecondMomentSampler",
    "SpeeDSampler",
    "TimestepSampler",
    "UniformSampler",
    "make_timestep_sampler",
]


def check_num_timesteps(num_timesteps: int) -> int:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps (T) must be an integer >= 1, got {num_timesteps!r}")
    return num_timesteps


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


class TimestepSampler:
    """A distribution p_t over the timesteps [0, T); subclasses give ``probabilities()``.

    The default ``sample`` draws t ~ p and returns the importance weights 1/(T p_t) (unbiased).
    """

    def __init__(self, num_timesteps: int):
        self.num_timesteps = check_num_timesteps(num_timesteps)

    def probabilities(self) -> Tensor:
        """p_t for t = 0 … T − 1, float64 on the CPU, shape (T,), summing to 1."""
        raise NotImplementedError

    def sample(self, batch_size: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None, x0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``batch_size`` timesteps t ~ p (int64) and their weights 1/(T p_t) (float32), on ``device``.

        ``generator`` is a CPU generator (draws happen on the CPU, then move); ``x0`` is unused here.
        """
        p = self.probabilities()
        t = torch.multinomial(p, check_batch_size(batch_size), replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.float().to(device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


class UniformSampler(TimestepSampler):
    """t ~ U{0, …, T − 1} with weight 1: DDPM's objective."""

    def probabilities(self) -> Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size, device=None, generator=None, x0=None):
        t = torch.randint(0, self.num_timesteps, (check_batch_size(batch_size),), generator=generator)
        return t.to(device), torch.ones(batch_size, device=device)


def check_losses(t: Tensor, losses: Tensor, num_timesteps: int) -> tuple[Tensor, Tensor]:
    """(t, losses) as CPU (int64, float64) 1-D tensors of one length, refusing NaN/Inf and t outside [0, T)."""
    t, losses = torch.as_tensor(t), torch.as_tensor(losses)
    if t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"t must be a 1-D integer tensor of timesteps, got shape {tuple(t.shape)} dtype {t.dtype}")
    if losses.shape != t.shape:
        raise ValueError(f"losses must have t's shape {tuple(t.shape)} (one unweighted loss per sample, e.g. "
                         f"mse.mean(dim=(1, 2, 3))), got {tuple(losses.shape)}")
    if not torch.isfinite(losses).all():
        raise ValueError("losses contain NaN or Inf: skip this update (or fix the training step) rather than "
                         "let one bad batch poison the loss history")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(f"t must lie in [0, T) = [0, {num_timesteps}), got values in [{int(t.min())}, {int(t.max())}]")
    return t.detach().cpu().long(), losses.detach().cpu().double()


def all_gather_ragged(values: Tensor) -> Tensor:
    """Concatenate a 1-D tensor over all DDP ranks (rank order), whatever each rank's length."""
    world = dist.get_world_size()
    size = torch.tensor([values.numel()], device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])


class LossAwareSampler(TimestepSampler):
    """A sampler that learns p_t from the losses it sees; all ranks must apply the same updates."""

    def update_with_local_losses(self, t: Tensor, losses: Tensor) -> None:
        """Update from this rank's (t, losses); under torch.distributed, gathers every rank's first.

        Call it on every rank with the unweighted per-sample losses, so that all ranks keep one p_t.
        """
        t, losses = check_losses(t, losses, self.num_timesteps)
        if dist.is_available() and dist.is_initialized():
            # gloo gathers CPU tensors; NCCL needs them on this rank's GPU
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            t = all_gather_ragged(t.to(device)).cpu()
            losses = all_gather_ragged(losses.to(device)).cpu()
        self.update_with_all_losses(t, losses)

    def update_with_all_losses(self, t: Tensor, losses: Tensor) -> None:
        """Update from the (t, losses) of all ranks; deterministic, so ranks stay identical."""
        raise NotImplementedError


class LossSecondMomentSampler(LossAwareSampler):
    """Improved-DDPM importance sampling (Nichol & Dhariwal 2021, Sec. 3.3): p_t ∝ √E[L_t²], Σ p_t = 1.

    E[L_t²] is the mean over the last ``history_per_term`` losses seen at t; p is mixed with
    ``uniform_prob`` of the uniform distribution so no t starves. Until every t has a full history,
    sampling is uniform with weight 1. Weights 1/(T p_t) keep the loss estimate unbiased.
    """

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if isinstance(history_per_term, bool) or not isinstance(history_per_term, int) or history_per_term < 1:
            raise ValueError("history_per_term must be an integer >= 1 (Improved-DDPM uses 10), "
                             f"got {history_per_term!r}")
        if not 0 <= uniform_prob < 1:
            raise ValueError(f"uniform_prob must lie in [0, 1) (Improved-DDPM uses 0.001; 1 would be plain "
                             f"uniform sampling: use UniformSampler), got {uniform_prob}")
        self.history_per_term, self.uniform_prob = history_per_term, float(uniform_prob)
        self.loss_history = torch.zeros(num_timesteps, history_per_term, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def probabilities(self) -> Tensor:
        uniform = torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
        if not self.warmed_up():
            return uniform
        root_mean_square = self.loss_history.pow(2).mean(dim=1).sqrt()
        if not root_mean_square.sum() > 0:  # every recorded loss is 0: nothing to prefer
            return uniform
        return (1 - self.uniform_prob) * root_mean_square / root_mean_square.sum() + self.uniform_prob * uniform

    def update_with_all_losses(self, t: Tensor, losses: Tensor) -> None:
        t, losses = check_losses(t, losses, self.num_timesteps)
        # In order, one at a time, as Improved-DDPM: a t drawn twice in a batch shifts its history twice.
        for step, loss in zip(t.tolist(), losses.tolist()):
            count = int(self.loss_counts[step])
            if count == self.history_per_term:
                self.loss_history[step, :-1] = self.loss_history[step, 1:].clone()
                self.loss_history[step, -1] = loss
            else:
                self.loss_history[step, count] = loss
                self.loss_counts[step] = count + 1

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        history, counts = state["loss_history"], state["loss_counts"]
        if history.shape != self.loss_history.shape or counts.shape != self.loss_counts.shape:
            raise ValueError(f"state was saved for loss_history shape {tuple(history.shape)}, this sampler has "
                             f"{tuple(self.loss_history.shape)} (T, history_per_term): build it with the saved T")
        self.loss_history = history.clone().double().cpu()
        self.loss_counts = counts.clone().long().cpu()


class SpeeDSampler(TimestepSampler):
    """SpeeD (Wang et al. 2024, "A Closer Look at Time Steps is Worthy of Triple Speed-Up"): asymmetric
    sampling plus change-aware weighting. Changes the objective on purpose: weights are not 1/(T p_t).

    Asymmetric sampling: P(t) ∝ k for t < τ and ∝ 1 for t >= τ, i.e. P(t) = k/(kτ + T − τ) and
    1/(kτ + T − τ): steps in the convergence area (t >= τ, where the process increment has stopped
    changing) are drawn k times less often than the others.

    Change-aware weighting: with g_t = d(1 − ᾱ_t)/dt (the process increment's rate of change, as
    np.gradient), w_t = (1 − λ) + (2λ − 1)·(g_t − min g)/(max g − min g) ∈ [1 − λ, λ] for t < τ and
    w_t = 1 for t >= τ. This follows the released ``Speed_IDDPM`` (sampling="ours", weighting="ours",
    defaults k = 5, λ = 0.6, τ = 700 of T = 1000 from its configs); λ > 0.5 puts more weight on the
    faster-changing steps.

    Args:
        alphas_cumprod: ᾱ_t of the schedule, shape (T,) (``DDPMSchedule.alphas_cumprod``).
        k: suppression ratio, >= 1 (1: uniform sampling).
        tau: first step of the convergence area, in (0, T]; default round(0.7 T) as the code's 700/1000.
        lam: weighting strength λ in [0.5, 1] (0.5: weight 1/2 everywhere below τ).
        dual_sampling: the released code also pairs each draw t with its mirror |t − m| about
            m = 1 + the first step where d√(1 − ᾱ_t)/dt < 1e-4. Off by default: with it the draws no
            longer follow P(t) above, which is the distribution the paper states.
    """

    def __init__(self, alphas_cumprod: Tensor, k: float = 5.0, tau: int | None = None, lam: float = 0.6,
                 dual_sampling: bool = False):
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        if alphas_cumprod.ndim != 1 or not ((alphas_cumprod > 0) & (alphas_cumprod <= 1)).all():
            raise ValueError("alphas_cumprod must be a 1-D tensor with entries in (0, 1] (ᾱ_t of the schedule), "
                             f"got shape {tuple(alphas_cumprod.shape)}")
        T = alphas_cumprod.numel()
        super().__init__(T)
        tau = round(0.7 * T) if tau is None else tau
        if isinstance(tau, bool) or not isinstance(tau, int) or not 0 < tau <= T:
            raise ValueError(f"tau must be an integer in (0, T] = (0, {T}] (the code uses 700 for T = 1000), "
                             f"got {tau!r}")
        if not 1 <= k < math.inf:  # inf would make every probability inf / inf = NaN
            raise ValueError(f"k must be >= 1 and finite (how many times likelier a step below tau is; SpeeD uses "
                             f"5), got {k}")
        if not 0.5 <= lam <= 1:
            raise ValueError(f"lam must lie in [0.5, 1] (weights span [1 - lam, lam]; SpeeD uses 0.6), got {lam}")
        self.k, self.tau, self.lam, self.dual_sampling = float(k), tau, float(lam), bool(dual_sampling)
        self._probabilities = torch.where(torch.arange(T) < tau, self.k, 1.0).double()
        self._probabilities /= self._probabilities.sum()
        self.loss_weights = self._change_aware_weights(alphas_cumprod)
        increment_rate = torch.gradient(torch.sqrt(1 - alphas_cumprod))[0] if T > 1 else torch.zeros(1)
        self.mirror_step = int(torch.nonzero(increment_rate < 1e-4)[0, 0]) + 1 if (increment_rate < 1e-4).any() else 1

    def _change_aware_weights(self, alphas_cumprod: Tensor) -> Tensor:
        T = self.num_timesteps
        rate = torch.gradient(1 - alphas_cumprod)[0] if T > 1 else torch.zeros(1, dtype=torch.float64)
        spread = rate.max() - rate.min()
        normalised = (rate - rate.min()) / spread if spread > 0 else torch.full_like(rate, 0.5)
        weights = (1 - self.lam) + (2 * self.lam - 1) * normalised
        return torch.where(torch.arange(T) < self.tau, weights, torch.ones_like(weights))

    def probabilities(self) -> Tensor:
        return self._probabilities.clone()

    def sample(self, batch_size, device=None, generator=None, x0=None):
        batch_size = check_batch_size(batch_size)
        if not self.dual_sampling:
            t = torch.multinomial(self._probabilities, batch_size, replacement=True, generator=generator)
        else:
            first = torch.multinomial(self._probabilities, batch_size // 2 + 1, replacement=True, generator=generator)
            mirrored = (first - self.mirror_step).abs().clamp(max=self.num_timesteps - 1)
            t = torch.cat([first, mirrored])[:batch_size]
        return t.to(device), self.loss_weights[t].float().to(device)


TIMESTEP_SAMPLERS = ("uniform", "importance", "speed", "adaptive")


def make_timestep_sampler(name: str, num_timesteps: int, *, alphas_cumprod: Tensor | None = None,
                          in_channels: int | None = None, **options) -> TimestepSampler:
    """The sampler called ``name``: uniform | importance | speed | adaptive, with its ``options``.

    ``speed`` needs the schedule's ``alphas_cumprod`` (length T); ``adaptive`` needs ``in_channels`` of x0.
    """
    if name == "uniform":
        return UniformSampler(num_timesteps, **options)
    if name == "importance":
        return LossSecondMomentSampler(num_timesteps, **options)
    if name == "speed":
        if alphas_cumprod is None or len(alphas_cumprod) != num_timesteps:
            raise ValueError("timestep_sampler 'speed' needs alphas_cumprod of length num_timesteps: pass "
                             "alphas_cumprod=schedule.alphas_cumprod")
        return SpeeDSampler(alphas_cumprod, **options)
    if name == "adaptive":
        if in_channels is None:
            raise ValueError("timestep_sampler 'adaptive' needs in_channels (channels of x0) for its policy network")
        from .learned_timestep_sampler import LearnedTimestepSampler

        return LearnedTimestepSampler(num_timesteps, in_channels, **options)
    raise ValueError(f"timestep_sampler must be one of {TIMESTEP_SAMPLERS}, got {name!r}")
