"""The adjoint of a per-sample solve: each sample's augmented system [y, a = dL/dy] is integrated backwards
with its own steps, and the parameter gradient is accumulated across the batch.

torchdiffeq's augmented state carries dL/dparams as a third part. Here the parameters are shared by the
batch, so a per-sample copy of them would cost batch x parameters memory (torchode's BacksolveAdjoint does
that, through vmap). Instead the parameter integral ``-int a^T df/dparams dt`` is taken with the same
Runge-Kutta weights as the state, one sample-weighted vector-Jacobian product per step: after a step's
accept/reject decision, ``sum_b sum_i h_b b_i (-a_ib)^T df/dparams(t_ib, y_ib)`` over the samples b that
accepted it is one backward pass through the step's retained stage graphs (a weighted cotangent sums the
per-sample products). So the parameter part never enters error control (the seminorm of Kidger et al.
2021 is the only choice). The graphs of the evaluations a step needs are kept until its decision; the
first stage's (f at the step's start, reused FSAL-style) lives on until every sample starting there has
accepted a step, so the backward takes as many evaluations per step as the forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ..adjoint import backward_solve
from ..methods import Method
from .control import mixed_rms
from .loop import RHS, LoopSettings, StepObserver, integrate_batched
from .stats import BatchedSolveStats
from .times import SampleTimes

__all__ = ["BatchedAdjointSpec", "batched_adjoint"]


@dataclass
class BatchedAdjointSpec:
    rhs: RHS  # (t: (batch,), y: (batch, features)) -> (batch, features)
    times: SampleTimes
    method: Method
    settings: LoopSettings
    adjoint_method: Method
    adjoint_settings: LoopSettings  # its error_norm is replaced by the mixed RMS over (y, a)
    stats: BatchedSolveStats


def batched_adjoint(spec: BatchedAdjointSpec, y0: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(batch, n, features)`` outputs, solved without a graph; gradients for y0 and params by the adjoint."""
    return _BatchedAdjoint.apply(spec, y0, *params)


class _ParameterGradient(StepObserver):
    """Keeps the graphs of the evaluations whose parameter products a step needs and, after the decision, adds
    the accepted samples' weighted vector-Jacobian products to the parameter gradient.

    A step's stages 2..s with b_i != 0 are its own evaluations. Its first stage is f at the step's start,
    evaluated earlier (FSAL: the previous accepted step's last stage; at first: the solve's first call) and
    reused, so its graph is kept as a *start graph* owned by the samples that start there; a sample that
    accepts a step consumes its start graph's product (weight h b_1) and owns the new one from then on.
    """

    def __init__(self, params: Sequence[torch.Tensor], method: Method):
        tab = method.tableau
        self.params, self.b, self.fsal, self.n = tuple(params), tuple(tab.b), tab.fsal, len(tab.b)
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.begin_solve()

    def begin_solve(self) -> None:
        self.stage: int | None = None  # None: outside a step
        self.outside_calls = 0
        self.records: list[tuple[float, torch.Tensor, torch.Tensor]] = []  # (b_i, f, a) of this step
        self.starts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (f, a, owners)
        self.next_start: tuple[torch.Tensor, torch.Tensor] | None = None

    def begin_step(self) -> None:
        self.stage, self.records, self.next_start = 1, [], None  # stage 0 is the kept f

    def _is_next_start(self) -> bool:
        # f(t1, y1): the FSAL last stage, or the extra evaluation after a non-FSAL step
        return self.stage == (self.n - 1 if self.fsal else self.n)

    def keeps_graph(self) -> bool:
        if not self.params:
            return False
        if self.stage is None:
            return self.outside_calls == 0  # the solve's first call is the first start graph; not the probe
        return (self.stage < self.n and self.b[self.stage] != 0) or self._is_next_start()

    def record(self, f: torch.Tensor, a: torch.Tensor) -> None:
        keep = self.keeps_graph() and f.requires_grad
        if self.stage is None:
            if keep:
                self.starts = [(f, a, torch.ones(f.shape[0], dtype=torch.bool, device=f.device))]
            self.outside_calls += 1
            return
        if keep and self.stage < self.n and self.b[self.stage] != 0:
            self.records.append((self.b[self.stage], f, a))
        if keep and self._is_next_start():
            self.next_start = (f, a)
        self.stage += 1

    def end_step(self, weight: torch.Tensor, moved: torch.Tensor) -> None:
        outputs = [f for _, f, _ in self.records] + [f for f, _, _ in self.starts]
        cotangents = ([a.mul(-b_i * weight) for b_i, _, a in self.records]
                      + [a.mul(-self.b[0] * weight * owners[:, None]) for _, a, owners in self.starts])
        if outputs and (self.records or self.b[0] != 0):
            grads = torch.autograd.grad(outputs, self.params, cotangents, retain_graph=True, allow_unused=True)
            for total, g in zip(self.grads, grads):
                if g is not None:
                    total.add_(g)
        starts = [(f, a, owners & ~moved) for f, a, owners in self.starts]
        self.starts = [entry for entry in starts if bool(entry[2].any())]  # graphs nobody starts from: freed
        if self.next_start is not None:
            self.starts.append((*self.next_start, moved))
        self.stage, self.records, self.next_start = None, [], None


def _augmented_dynamics(rhs: RHS, n: int, observer: _ParameterGradient) -> Callable:
    def dynamics(t: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        y, a = aug[:, :n], aug[:, n:]
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            f = rhs(t, y)
            keep = observer.keeps_graph()
            if f.requires_grad:
                (vjp_y,) = torch.autograd.grad(f, y, -a, retain_graph=keep, allow_unused=True)
            else:
                vjp_y = None
        observer.record(f, a)
        return torch.cat([f.detach(), torch.zeros_like(a) if vjp_y is None else vjp_y], dim=1)

    return dynamics


class _BatchedAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: BatchedAdjointSpec, y0: torch.Tensor, *params: torch.Tensor):
        ys = integrate_batched(spec.rhs, y0, spec.times, spec.method, spec.settings, spec.stats)
        ctx.spec = spec
        ctx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        spec: BatchedAdjointSpec = ctx.spec
        ys, *params = ctx.saved_tensors
        n = ys.shape[2]
        observer = _ParameterGradient(params, spec.adjoint_method)
        dynamics = _augmented_dynamics(spec.rhs, n, observer)
        settings = spec.adjoint_settings
        s_out, direction = spec.times.s, spec.times.direction
        aug = torch.cat([ys[:, -1], grad_ys[:, -1]], dim=1)
        with backward_solve():
            for i in range(s_out.shape[1] - 1, 0, -1):
                # backwards from t_i to t_{i-1}: solver time s' = -s increases along the way
                segment = SampleTimes(torch.stack([-s_out[:, i], -s_out[:, i - 1]], dim=1), -direction)
                seg_stats = BatchedSolveStats(method=spec.adjoint_method.name, backend="torch")
                seg_stats.reset_per_sample(aug.shape[0], aug.device)
                aug = integrate_batched(dynamics, aug, segment, spec.adjoint_method, settings, seg_stats,
                                        observer)[:, 1].clone()
                _absorb(spec.stats, seg_stats)
                aug[:, :n] = ys[:, i - 1]
                aug[:, n:] += grad_ys[:, i - 1]
        return (None, aug[:, n:], *observer.grads)


def _absorb(stats: BatchedSolveStats, segment: BatchedSolveStats) -> None:
    stats.nfe_adjoint += segment.nfe
    stats.n_steps_adjoint += segment.n_steps
    stats.nfe_adjoint_per_sample = stats.nfe_adjoint_per_sample + segment.nfe_per_sample


def adjoint_settings(settings: LoopSettings, n: int) -> LoopSettings:
    """The backward solve's settings with the per-sample mixed RMS over the (y, a) parts as error norm."""
    from dataclasses import replace

    norm = mixed_rms((n, n))
    return replace(settings, error_norm=norm, initial_norm=norm)
