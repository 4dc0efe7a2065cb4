"""Temporal Adaptive Batch Normalization (TA-BN, Zheng et al., NeurIPS 2024), as the paper defines it.

A grid of M+1 evenly spaced times t*_0 = t_min < ... < t*_M = t_max (the paper's [0, T]; a
diffusion model conditions on e.g. log σ, so the grid may start at a negative time) carries
per-point running statistics (µ*_m, σ²*_m, buffers) and affine parameters (γ*_m, β*_m, learnable). A solver time t with
t*_l <= t <= t*_{l+1} (Δ = (t_max - t_min)/M) uses the linear-interpolation weights of Eq. 7,
    ω1 = (t*_{l+1} - t) / Δ   (left point l),      ω2 = (t - t*_l) / Δ   (right point l+1).
The released code mirrors these weights (the left point gets (t - t*_l)/Δ, so its interpolant
jumps at every grid point); we follow Eq. 7, which makes everything continuous in t.

Times outside [t_min, t_max]. Adaptive solvers call the right-hand side beyond the end of the span:
the initial-step rule of torchdiffeq (which pynodeta's dopri5 reproduces) probes f(t0 + h0, y0 + h0·f0)
with h0 that may exceed t_max - t0. So by default (``outside="clamp"``) such a time is treated as the
nearest end point — its γ, β and statistics, and in train mode its running-statistics update — as
the released code also does; ``outside="error"`` raises instead.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..ode.backends.graphed_step import capturing
from .stat_updates import stat_updates_allowed
from .time import time_as_tensor

__all__ = ["TABatchNorm", "TABatchNorm1d", "TABatchNorm2d", "grid_weights", "tabn_regularizer"]

# Times within this fraction of the grid's scale outside [t_min, t_max] are floating-point round-off
# of an end point (e.g. t0 + Σh landing at t_max·(1 + 1e-7)); they are the end point, not out of range.
_ROUNDOFF = 1e-5


def _roundoff(t_min: float, t_max: float) -> float:
    return _ROUNDOFF * max(t_max - t_min, abs(t_min), abs(t_max))


def check_grid(t_min: float, t_max: float) -> tuple[float, float]:
    """``(t_min, t_max)`` as floats if they bound a grid (finite, t_min < t_max); ValueError otherwise."""
    t_min, t_max = float(t_min), float(t_max)
    if not (math.isfinite(t_min) and math.isfinite(t_max)) or not t_max > t_min:
        raise ValueError(f"the TA-BN grid [t_min, t_max] needs finite t_min < t_max (T > 0 for [0, T]), "
                         f"got [{t_min}, {t_max}]")
    return t_min, t_max


def grid_weights(t, M: int, t_max: float, *, outside: Literal["error", "clamp"], t_min: float = 0.0):
    """Eq. 7 for a scalar time on the grid [t_min, t_max] (default [0, t_max], the paper's [0, T]):
    returns ``(l, w1, w2)`` with ``t ≈ w1·t*_l + w2·t*_{l+1}``.

    ``l`` is an int in [0, M-1]; at t = t_max the right point is t_max itself (l = M-1, w2 = 1).
    ``w1``, ``w2`` are floats, or 0-d tensors when ``t`` is a tensor (so the interpolation stays
    differentiable in t). t outside the grid: ``outside="error"`` raises ValueError,
    ``outside="clamp"`` uses the nearest end point (w = 1 on t*_0 or t*_M).
    """
    # The grid index needs a host number: a 0-d tensor syncs here, once per call.
    t_value = float(t.detach() if isinstance(t, torch.Tensor) else t)
    if math.isnan(t_value):
        raise ValueError("t is NaN")
    tol = _roundoff(t_min, t_max)
    if (t_value < t_min - tol or t_value > t_max + tol) and outside != "clamp":
        raise ValueError(
            f"t = {t_value} is outside the TA-BN grid [{t_min}, {t_max}]; build the layer with a grid "
            f"covering the solve's span, or pass outside='clamp' to use the end-point statistics there"
        )
    delta = (t_max - t_min) / M
    if t_value <= t_min:
        return 0, 1.0, 0.0
    if t_value >= t_max:
        return M - 1, 0.0, 1.0
    l = min(int((t_value - t_min) / delta), M - 1)
    w2 = (t - t_min) / delta - l  # ω2 = (t - t*_l)/Δ with t*_l = t_min + l·Δ
    return l, 1.0 - w2, w2


def _host(w) -> float:
    """A weight as a Python float (it may be a 0-d tensor carrying the gradient in t)."""
    return float(w.detach()) if isinstance(w, torch.Tensor) else float(w)


def _normalise(x, mean, var, gamma, beta, eps: float) -> torch.Tensor:
    """(x - µ)/sqrt(σ² + eps)·γ + β with µ, σ² of shape (batch or 1, C) and γ, β of (C,) or (batch, C)."""
    scale = torch.rsqrt(var + eps)
    shift = -mean * scale
    if gamma is not None:
        scale, shift = scale * gamma, shift * gamma + beta
    view = (*scale.shape, *([1] * (x.dim() - 2)))
    return x * scale.reshape(view).to(x.dtype) + shift.reshape(view).to(x.dtype)


def _check_times(t: torch.Tensor, t_min: float, t_max: float, outside: str) -> None:
    """Per-sample times are numbers, and on the grid unless ``outside="clamp"``."""
    nan = torch.isnan(t)
    if bool(nan.any()):  # NaN passes every comparison: without this it becomes a garbage grid index
        raise ValueError(f"per-sample t is NaN at batch positions {nan.nonzero().flatten().tolist()[:10]}; "
                         f"every sample's time must be a number in [{t_min}, {t_max}]")
    tol = _roundoff(t_min, t_max)
    if outside != "clamp" and bool(((t < t_min - tol) | (t > t_max + tol)).any()):
        raise ValueError(
            f"some t are outside the TA-BN grid [{t_min}, {t_max}] (min {t.min().item()}, max "
            f"{t.max().item()}); build the layer with a grid covering them, or pass outside='clamp'"
        )


def _grid_weights_per_sample(t: torch.Tensor, M: int, t_min: float, t_max: float, outside: str):
    """Eq. 7 for a (batch,) tensor of times: returns ``(l, w2)``, both (batch,). While a solver's step is
    recorded as a graph the checks, which read t back to the host, are skipped: its span lies on the grid."""
    if not capturing():
        _check_times(t, t_min, t_max, outside)
    pos = (t.clamp(t_min, t_max) - t_min) / ((t_max - t_min) / M)
    l = pos.detach().floor().long().clamp(max=M - 1)
    return l, pos - l.to(t.dtype)


class TABatchNorm(nn.Module):
    """TA-BN, whatever the input's rank: the base of TABatchNorm1d/2d, which only check the shape.
    ``isinstance(m, TABatchNorm)`` finds every TA-BN layer.

    forward(t, x):
        t: float, 0-d tensor, or a (batch,) tensor of per-sample times (``solve(..., batched=True)`` passes
           one), in [t_min, t_max]. In eval mode each sample is normalised with the statistics interpolated
           at its own time; in train mode see ``_forward_train_per_sample`` (batch statistics, own γ, β).
        x: (batch, num_features, *spatial) -> same shape.
    Train mode: normalise with the batch mean/variance, scale/shift with γ(t), β(t); the two
    neighbouring grid points' running statistics move towards the batch statistics with momentum
    η·ω1 and η·ω2. Eval mode: µ(t), σ²(t), γ(t), β(t) all interpolated, so the output of a sample
    does not depend on the rest of the batch.
    A reversed-time solve (from t_max down to t_min) visits the same times and uses the same grid
    points. A time outside [t_min, t_max] is treated as the nearest end point (``outside="clamp"``, the default,
    needed for adaptive solvers' initial-step probe) or raises (``outside="error"``).
    """

    time_aware = True

    def __init__(
        self,
        num_features: int,                           # channels C
        M: int = 100,                                # grid intervals; M+1 grid points (paper: 100)
        T: float | None = None,                      # grid [0, T] (the paper's); or give t_min, t_max
        t_min: float | None = None,                  # grid [t_min, t_max]: default [0, 1]; may be < 0
        t_max: float | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,                       # η of the running-statistics update
        affine: bool = True,                         # learnable γ*_m, β*_m per grid point
        outside: Literal["error", "clamp"] = "clamp",  # t outside [0, T]: use the end point, or raise
        update_stats_in_backward: bool = False,      # count calls made during a backward (adjoint) solve
        sync_stats: bool = False,                    # all-reduce batch statistics across DDP ranks
        reg_weight: float = 0.1,                     # λ of regularizer()
    ):
        super().__init__()
        for name, value in (("num_features", num_features), ("M", M)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0 (added to the variance before the square "
                             f"root), got {eps}")
        if T is not None:
            if t_min is not None or t_max is not None:
                raise ValueError(f"give T (the grid [0, T]) or t_min and t_max, not both; got T={T}, "
                                 f"t_min={t_min}, t_max={t_max}")
            t_min, t_max = 0.0, T
        self.t_min, self.t_max = check_grid(0.0 if t_min is None else t_min, 1.0 if t_max is None else t_max)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
            # torch's BatchNorm reads None as a cumulative average; TA-BN's per-grid-point update has no count
            # to divide by, so it takes a number only
            raise ValueError(f"momentum must be a number in [0, 1] (the running statistics' update rate), got "
                             f"{momentum!r}")
        if isinstance(reg_weight, bool) or not isinstance(reg_weight, (int, float)) or \
                not (math.isfinite(reg_weight) and reg_weight >= 0):
            raise ValueError(f"reg_weight must be a finite number >= 0 (a negative one would reward γ and β for "
                             f"drifting from 1 and 0), got {reg_weight!r}")
        if outside not in ("error", "clamp"):
            raise ValueError(f"outside must be 'error' or 'clamp', got {outside!r}")
        self.num_features, self.M = num_features, M
        self.eps, self.momentum, self.affine, self.outside = eps, momentum, affine, outside
        self.update_stats_in_backward, self.sync_stats, self.reg_weight = (
            update_stats_in_backward, sync_stats, reg_weight)
        self.register_buffer("running_mean", torch.zeros(M + 1, num_features))
        self.register_buffer("running_var", torch.ones(M + 1, num_features))
        if affine:
            self.weight = nn.Parameter(torch.ones(M + 1, num_features))
            self.bias = nn.Parameter(torch.zeros(M + 1, num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @property
    def grid(self) -> torch.Tensor:
        """The grid times t*_m = t_min + m·Δ, Δ = (t_max - t_min)/M, (M+1,)."""
        return self.t_min + torch.arange(self.M + 1, dtype=torch.float64) * ((self.t_max - self.t_min) / self.M)

    def _check_input(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x has {x.shape[1]} channels, this layer was built for {self.num_features}")
        # a plain number stays a host float (no tensor to build); anything else, lists of per-sample times
        # included, goes through the shared conversion, which refuses text and bools
        t = float(t) if isinstance(t, numbers.Real) and not isinstance(t, bool) else time_as_tensor(t, x)
        if isinstance(t, torch.Tensor) and t.dim() == 0 and not self.training and capturing():
            # a solver's step recorded as a graph reads nothing back to the host, and the grid cell of a scalar
            # t is a host number: every sample takes the per-sample path's device-side cell instead
            t = t.expand(x.shape[0])
        if isinstance(t, torch.Tensor) and t.dim() == 1:
            if self.training:
                return self._forward_train_per_sample(t, x)
            return self._forward_per_sample(t, x)
        l, w1, w2 = grid_weights(t, self.M, self.t_max, outside=self.outside, t_min=self.t_min)
        if isinstance(w2, torch.Tensor):  # lerp needs its tensor weight in the parameters' dtype
            w1, w2 = w1.to(self.running_mean.dtype), w2.to(self.running_mean.dtype)
        gamma, beta = self._interpolated_affine(l, w2)
        if not self.training:
            mean = torch.lerp(self.running_mean[l], self.running_mean[l + 1], w2)
            var = torch.lerp(self.running_var[l], self.running_var[l + 1], w2)
            if isinstance(w2, torch.Tensor) and w2.requires_grad:
                # The statistics depend on t here, and the fused kernel takes no gradient for them.
                return _normalise(x, mean[None], var[None], gamma, beta, self.eps)
            return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, self.eps)
        update = stat_updates_allowed(self.update_stats_in_backward)
        if self.sync_stats and _distributed():
            return self._forward_synced(x, l, _host(w1), _host(w2), gamma, beta, update)
        # With momentum 1 the fused kernel writes the batch mean and unbiased variance into these
        # buffers while it normalises: one pass over x for both (they must start finite: 0·NaN = NaN).
        # The same call runs whether or not we update, so a recomputation (activation checkpointing)
        # builds the same graph as the first pass.
        batch_mean = torch.zeros_like(self.running_mean[0])
        batch_var = torch.zeros_like(self.running_var[0])
        y = F.batch_norm(x, batch_mean, batch_var, gamma, beta, True, 1.0, self.eps)
        if update:
            self._update_running(l, _host(w1), _host(w2), batch_mean, batch_var)
        return y

    def _interpolated_affine(self, l, w2):
        if not self.affine:
            return None, None
        return (torch.lerp(self.weight[l], self.weight[l + 1], w2),
                torch.lerp(self.bias[l], self.bias[l + 1], w2))

    @torch.no_grad()
    def _update_running(self, l: int, w1: float, w2: float, batch_mean, batch_var) -> None:
        # µ*_l <- (1 - η ω1) µ*_l + η ω1 µ_B ;  µ*_{l+1} <- (1 - η ω2) µ*_{l+1} + η ω2 µ_B  (same for σ²)
        for index, w in ((l, w1), (l + 1, w2)):
            if w > 0.0:
                self.running_mean[index].lerp_(batch_mean, self.momentum * w)
                self.running_var[index].lerp_(batch_var, self.momentum * w)

    def _forward_per_sample(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        l, w2 = _grid_weights_per_sample(t, self.M, self.t_min, self.t_max, self.outside)
        w = w2[:, None].to(self.running_mean.dtype)
        mean = torch.lerp(self.running_mean[l], self.running_mean[l + 1], w)   # (batch, C)
        var = torch.lerp(self.running_var[l], self.running_var[l + 1], w)
        gamma = beta = None
        if self.affine:
            gamma = torch.lerp(self.weight[l], self.weight[l + 1], w)
            beta = torch.lerp(self.bias[l], self.bias[l + 1], w)
        return _normalise(x, mean, var, gamma, beta, self.eps)

    def _forward_train_per_sample(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Train mode with per-sample times (a per-sample-step solve): the batch statistics are one set for the
        whole batch, as in any train-mode BN; each sample is scaled and shifted with its own γ(t_b), β(t_b);
        and every grid point's running statistics move towards the batch statistics with momentum
        η·mean_b(ω_bm), ω_bm the Eq. 7 weight of sample b on point m (with equal times: η·ω1, η·ω2, the
        scalar-t update). Outputs depend on the batch here; in eval mode they do not."""
        if self.sync_stats and _distributed():
            raise ValueError("sync_stats with per-sample t is not supported; pass a scalar t or sync_stats=False")
        l, w2 = _grid_weights_per_sample(t, self.M, self.t_min, self.t_max, self.outside)
        w = w2[:, None].to(self.running_mean.dtype)
        batch_mean = torch.zeros_like(self.running_mean[0])
        batch_var = torch.zeros_like(self.running_var[0])
        y = F.batch_norm(x, batch_mean, batch_var, None, None, True, 1.0, self.eps)
        if stat_updates_allowed(self.update_stats_in_backward):
            with torch.no_grad():
                share = torch.zeros(self.M + 1, dtype=w.dtype, device=w.device)
                share.index_add_(0, l, 1.0 - w[:, 0]).index_add_(0, l + 1, w[:, 0])
                rate = (self.momentum * share / len(t))[:, None]
                self.running_mean.lerp_(batch_mean.expand_as(self.running_mean), rate)
                self.running_var.lerp_(batch_var.expand_as(self.running_var), rate)
        if not self.affine:
            return y
        gamma = torch.lerp(self.weight[l], self.weight[l + 1], w)   # (batch, C)
        beta = torch.lerp(self.bias[l], self.bias[l + 1], w)
        view = (len(t), -1, *([1] * (x.dim() - 2)))
        return y * gamma.reshape(view).to(y.dtype) + beta.reshape(view).to(y.dtype)

    def _forward_synced(self, x, l, w1, w2, gamma, beta, update):
        """Batch statistics over all ranks (like SyncBatchNorm), through differentiable all-reduces."""
        dims, C = [0, *range(2, x.dim())], x.shape[1]
        view = (1, C, *([1] * (x.dim() - 2)))
        # Two passes, the mean first and then the centred sum of squares: exact where
        # E[x²] - E[x]² would cancel catastrophically.
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_full((1,), x.numel() // C)]))
        n = totals[C]
        mean = totals[:C] / n
        centred = x - mean.reshape(view)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        if update:
            unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
            self._update_running(l, w1, w2, mean.detach().to(self.running_mean.dtype),
                                 unbiased.to(self.running_var.dtype))
        y = centred * torch.rsqrt(var + self.eps).reshape(view)
        if self.affine:
            y = y * gamma.reshape(view) + beta.reshape(view)
        return y

    def regularizer(self, weight: float | None = None) -> torch.Tensor:
        """The released code's γ/β regulariser: λ·Σ_m [mse(γ*_m, 1) + mse(β*_m, 0)] (mean over channels).

        weight: λ; None uses the layer's ``reg_weight``. A 0-d tensor; 0 without affine parameters.
        """
        if not self.affine:
            return self.running_mean.new_zeros(())
        per_point = ((self.weight - 1.0) ** 2).mean(dim=1) + (self.bias ** 2).mean(dim=1)
        return (self.reg_weight if weight is None else weight) * per_point.sum()

    def extra_repr(self) -> str:
        return (f"{self.num_features}, M={self.M}, t_min={self.t_min}, t_max={self.t_max}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, outside={self.outside!r}, "
                f"update_stats_in_backward={self.update_stats_in_backward}, sync_stats={self.sync_stats}")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class TABatchNorm1d(TABatchNorm):
    __doc__ = "TA-BN for x: (batch, C) or (batch, C, length).\n\n" + TABatchNorm.__doc__

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(
                f"TABatchNorm1d expects x of shape (batch, C) or (batch, C, L), got {tuple(x.shape)}")


class TABatchNorm2d(TABatchNorm):
    __doc__ = "TA-BN for x: (batch, C, height, width).\n\n" + TABatchNorm.__doc__

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"TABatchNorm2d expects x of shape (batch, C, H, W), got {tuple(x.shape)}")


def tabn_regularizer(model: nn.Module, weight: float | None = None) -> torch.Tensor:
    """λ·Σ_layers Σ_m [mse(γ*_m, 1) + mse(β*_m, 0)], the TA-BN code's pull of γ/β towards the identity:
    the sum of ``regularizer(weight)`` over every TA-BN layer in ``model``, a training loss term.

    weight: λ for every layer; None uses each layer's own ``reg_weight`` (0.1, the paper's code,
    unless the layer was built with another); 0 gives an exact zero (no graph).
    A 0-d tensor; 0 when the model has no affine TA-BN layer.
    """
    if weight is not None and not weight >= 0:
        raise ValueError(f"the TA-BN regulariser weight must be >= 0 (0 disables it), got {weight}")
    layers = [m for m in model.modules() if isinstance(m, TABatchNorm) and m.affine]
    if weight == 0 or not layers:
        return torch.zeros(())
    return torch.stack([m.regularizer(weight) for m in layers]).sum()
