"""The learned timestep sampler of Kim et al. 2024, "Adaptive Non-uniform Timestep Sampling".

A policy π_φ(t | x0): a small CNN on the clean image x0 gives (α, β) of a Beta distribution; u ~ Beta(α, β)
and t = round(u·(T − 1)). The policy is trained by REINFORCE to pick the timesteps whose training most
lowers the variational bound (the reward comes from ``pynodeta.train.adaptive_timesteps``). It changes
the objective on purpose, so its loss weights are 1.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributions import Beta

from .timestep_samplers import TimestepSampler, check_batch_size

__all__ = ["LearnedTimestepSampler", "BetaPolicy"]

MIN_CONCENTRATION = 1e-5  # α, β = softplus(·) + 1e-5 > 0, as the released ActorNetwork


class BetaPolicy(nn.Module):
    """x0 (batch, channels, height, width) → (α, β), each (batch,): a two-conv CNN, global average pool, MLP.

    The released ActorNetwork has three conv+max-pool stages sized for 32×32 inputs; a stride-2 conv and a
    global average pool take any image size (digits are 8×8). Its last layer starts with weight 0 and a bias
    of softplus⁻¹(1 − 1e-5), so α = β = 1 exactly: Beta(1, 1) is uniform. (The code's bias 0.5 gives
    α = β ≈ 0.97, close to but not exactly uniform.)
    """

    def __init__(self, in_channels: int, width: int = 32, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(math.expm1(1.0 - MIN_CONCENTRATION)))

    def forward(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        alpha, beta = nn.functional.softplus(self.head(self.features(x0))).add(MIN_CONCENTRATION).unbind(dim=1)
        return alpha, beta


def _draw_beta(alpha: Tensor, beta: Tensor, generator: torch.Generator | None) -> Tensor:
    """u ~ Beta(α, β) on the CPU; with a generator, reproducible and leaving the global RNG untouched."""
    distribution = Beta(alpha.detach().double().cpu(), beta.detach().double().cpu())
    if generator is None:
        return distribution.sample()
    # torch's Beta sampler reads the global generator only; seed a forked copy from ``generator``.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return distribution.sample()


class LearnedTimestepSampler(TimestepSampler):
    """π_φ(t | x0) with its own optimiser; ``reinforce`` takes one policy-gradient step.

    Args:
        num_timesteps: T.
        in_channels: channels of x0.
        width, hidden: CNN width and MLP width of the policy.
        lr: Adam learning rate of the policy (the paper: 1e-2).
        max_grad_norm: gradient-norm clip of each policy step (the paper: 1).
        entropy_coef: weight of the entropy bonus (the paper: 0.01).
        baseline_decay: the reward baseline is an exponential moving average of past mean rewards with
            this decay (None: no baseline, as the released code's default). A baseline leaves the policy
            gradient unbiased and lowers its variance (REFERENCES §6).
    """

    def __init__(self, num_timesteps: int, in_channels: int, width: int = 32, hidden: int = 64,
                 lr: float = 1e-2, max_grad_norm: float = 1.0, entropy_coef: float = 0.01,
                 baseline_decay: float | None = 0.9):
        super().__init__(num_timesteps)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1 (channels of x0), got {in_channels!r}")
        # inf lr or entropy_coef would turn the policy's weights into NaN at the first update;
        # max_grad_norm = inf is torch's "no clipping"
        if not 0 < lr < math.inf or not max_grad_norm > 0 or not 0 <= entropy_coef < math.inf:
            raise ValueError("need lr > 0 and finite, max_grad_norm > 0, entropy_coef >= 0 and finite; "
                             f"got lr={lr}, max_grad_norm={max_grad_norm}, entropy_coef={entropy_coef}")
        if baseline_decay is not None and not 0 <= baseline_decay < 1:
            raise ValueError(f"baseline_decay must lie in [0, 1) or be None (no baseline), got {baseline_decay}")
        self.in_channels, self.max_grad_norm, self.entropy_coef = in_channels, max_grad_norm, entropy_coef
        self.baseline_decay = baseline_decay
        self.policy = BetaPolicy(in_channels, width, hidden)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.baseline: float | None = None

    @property
    def device(self) -> torch.device:
        return self.policy.head.weight.device

    def to(self, device: torch.device | str) -> LearnedTimestepSampler:
        """Move the policy and its optimiser state (``sample`` does it when x0 arrives on another device)."""
        self.policy.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor) and key != "step":
                    state[key] = value.to(device)
        return self

    def probabilities(self) -> Tensor:
        raise NotImplementedError("the adaptive sampler's p(t | x0) depends on x0: use log_prob(x0, t) or summary(x0)")

    def _check_x0(self, x0: Tensor | None, batch_size: int) -> Tensor:
        if x0 is None:
            raise ValueError("x0 is required: the adaptive sampler's policy π(t | x0) looks at the clean batch; "
                             "call sample(len(x0), x0=x0)")
        if x0.ndim != 4 or x0.shape[0] != batch_size or x0.shape[1] != self.in_channels:
            raise ValueError(f"x0 must have shape (batch_size={batch_size}, in_channels={self.in_channels}, H, W), "
                             f"got {tuple(x0.shape)}")
        if x0.device != self.device:  # the policy follows its input's device, as a module's buffers follow it
            self.to(x0.device)
        return x0

    def sample(self, batch_size, device=None, generator=None, x0=None):
        """One t per image of ``x0``, t = round(u (T − 1)), u ~ Beta(α(x0), β(x0)); weights are 1."""
        x0 = self._check_x0(x0, check_batch_size(batch_size))
        with torch.no_grad():
            alpha, beta = self.policy(x0.detach())
        t = torch.round(_draw_beta(alpha, beta, generator) * (self.num_timesteps - 1)).long()
        return t.to(device), torch.ones(batch_size, device=device)

    def log_prob(self, x0: Tensor, t: Tensor, quadrature_points: int = 8) -> Tensor:
        """log π(t | x0) of the discretised policy, (batch,), differentiable in the policy's weights.

        t = round(u (T − 1)) is drawn with probability ∫ Beta(u; α, β) du over its bin
        [(t − ½)/(T − 1), (t + ½)/(T − 1)] ∩ [0, 1], computed by the midpoint rule. The released code keeps
        the continuous u and uses the Beta density at u; our ``sample`` returns only t (so checkpoints and
        DDP need only t), and the bin probability is the exact likelihood of the action taken.
        """
        return self._bin_log_prob(*self.policy(x0), t, quadrature_points)

    def _bin_log_prob(self, alpha: Tensor, beta: Tensor, t: Tensor, quadrature_points: int = 8) -> Tensor:
        if self.num_timesteps == 1:
            return alpha * 0.0  # t = 0 always: probability 1
        width = self.num_timesteps - 1
        t = t.to(alpha.device, torch.float64)
        low, high = ((t - 0.5) / width).clamp(0, 1), ((t + 0.5) / width).clamp(0, 1)
        fractions = torch.arange(quadrature_points, device=alpha.device, dtype=torch.float64).add(0.5)
        fractions /= quadrature_points
        points = (low[:, None] + (high - low)[:, None] * fractions).to(alpha.dtype)
        log_density = Beta(alpha[:, None], beta[:, None]).log_prob(points)
        return torch.logsumexp(log_density, dim=1) + torch.log((high - low).to(alpha.dtype) / quadrature_points)

    def reinforce(self, x0: Tensor, t: Tensor, reward: Tensor | float) -> Tensor:
        """One REINFORCE step: loss = −mean((R − b)·log π(t | x0)) − c·mean(H[Beta(α, β)]); returns the loss.

        ``reward``: a scalar or one value per sample (the paper's reward is Σ_{τ∈S} ΔL_τ). The released code
        adds c·H to the reward itself (not detached), so the entropy gradient gets multiplied by log π and
        its sign depends on the draw; we use the usual separate entropy bonus, which always favours spread.
        """
        t = torch.as_tensor(t)
        if t.ndim != 1 or t.is_floating_point():
            raise ValueError(f"t must be the 1-D integer timesteps that sample() drew, got shape {tuple(t.shape)}")
        x0 = self._check_x0(x0, t.shape[0])
        reward = torch.as_tensor(reward, dtype=torch.float64, device=x0.device).detach()
        if reward.ndim == 0:
            reward = reward.expand(t.shape[0])
        if reward.shape != t.shape:
            raise ValueError(f"reward must be a scalar or have t's shape {tuple(t.shape)}, got {tuple(reward.shape)}")
        if not torch.isfinite(reward).all():
            raise ValueError("reward contains NaN or Inf: skip this policy update (check the VLB terms it came from)")
        # under DDP the mean over every rank's rewards: one baseline on every rank, as one policy
        reward_mean = float(mean_over_ranks(reward.mean()))
        baseline = reward_mean if self.baseline is None else self.baseline
        advantage = reward - baseline if self.baseline_decay is not None else reward
        alpha, beta = self.policy(x0)
        entropy = Beta(alpha, beta).entropy()
        log_prob = self._bin_log_prob(alpha, beta, t)
        loss = -(advantage.to(alpha.dtype) * log_prob).mean() - self.entropy_coef * entropy.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._average_gradients_over_ranks()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.optimizer.step()
        if self.baseline_decay is not None:
            self.baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * reward_mean
        return loss.detach()

    def _average_gradients_over_ranks(self) -> None:
        # Every rank takes the same step, so every rank keeps the same policy (DDP does this for models).
        if not (dist.is_available() and dist.is_initialized()):
            return
        for parameter in self.policy.parameters():
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= dist.get_world_size()

    @torch.no_grad()
    def summary(self, x0: Tensor, draws: int = 4096, seed: int = 0) -> dict[str, float]:
        """The policy's distribution of t over the images of ``x0``: mean, 10/50/90 % quantiles, mean α and β."""
        alpha, beta = self.policy(x0)
        pick = torch.randint(0, alpha.shape[0], (draws,), generator=torch.Generator().manual_seed(seed))
        u = _draw_beta(alpha.cpu()[pick], beta.cpu()[pick], torch.Generator().manual_seed(seed + 1))
        t = u * (self.num_timesteps - 1)
        q10, q50, q90 = torch.quantile(t, torch.tensor([0.1, 0.5, 0.9], dtype=t.dtype)).tolist()
        mean = float((alpha / (alpha + beta)).mean()) * (self.num_timesteps - 1)
        return {"t_mean": mean, "t_q10": q10, "t_q50": q50, "t_q90": q90,
                "alpha_mean": float(alpha.mean()), "beta_mean": float(beta.mean())}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]


def mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of ``value`` over the torch.distributed ranks; ``value`` itself outside DDP."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()
