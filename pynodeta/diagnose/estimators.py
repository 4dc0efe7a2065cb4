"""How much of a layer's activation is due to time: the estimators behind the survival ratio.

Every estimator takes the activations of one layer at a fixed input, stacked over the audited
times: ``acts: (times, *shape)``. With the input fixed, whatever varies along the first axis was
caused by t. All of them are invariant to a global scale and shift of the activations, so a
normalisation's output can be compared with its input although the two live on different scales.
"""

from __future__ import annotations

import math

import torch

__all__ = ["noise_floor", "slices", "time_share", "survival_ratio", "offset_fraction", "output_sensitivity"]


def noise_floor(dtype: torch.dtype) -> float:
    """The smallest time share treated as a signal: ``(100·eps)²`` of ``dtype``.

    Round-off alone makes an exactly cancelled activation differ across times by a few eps
    (relative), i.e. a variance share of order eps²; a hundredfold margin keeps that below the floor.
    """
    return (100.0 * torch.finfo(dtype).eps) ** 2


def slices(acts: torch.Tensor) -> torch.Tensor:
    """The (sample, channel) slices of an activation stack: (times, slices, elements per slice).

    acts: (times, batch, channels, *spatial) -> one slice per (sample, channel), over space;
    (times, batch, features) -> one slice per feature, over the batch; anything smaller: one slice.
    Every normalisation rescales each such slice by a single factor (per channel, per sample and
    channel, per sample and group, or per sample), so shares measured per slice do not change when
    a normalisation merely rescales.
    """
    if acts.dim() >= 4:
        return acts.reshape(acts.shape[0], acts.shape[1] * acts.shape[2], -1)
    if acts.dim() == 3:
        return acts.movedim(2, 1)
    return acts.reshape(acts.shape[0], 1, -1)


def time_share(acts: torch.Tensor) -> float:
    """Fraction of the activations' variance explained by time, in [0, 1], averaged over slices.

    For each (sample, channel) slice (see ``slices``), with a[k, e] its element e at time k:
        V_time  = mean_e Var_k a[k, e]          (variance across times, per element, averaged)
        V_total = Var_{k, e} a[k, e]            (variance over times and elements together)
        share   = V_time / V_total              (law of total variance: V_total = V_time + Var_e mean_k a)
    and the result is the mean share over slices that vary at all (0 if none does). Variances are the
    biased (1/n) ones, computed in float64. Invariant to scaling and shifting any slice.
    acts: (times, *shape), times >= 2.
    """
    a = slices(acts.detach().to(torch.float64))
    v_time = a.var(dim=0, unbiased=False).mean(dim=-1)
    v_total = a.transpose(0, 1).reshape(a.shape[1], -1).var(dim=-1, unbiased=False)
    varying = v_total > 0
    return float((v_time[varying] / v_total[varying]).mean()) if varying.any() else 0.0


def survival_ratio(acts_in: torch.Tensor, acts_out: torch.Tensor, floor: float) -> float | None:
    """How much of the time signal entering a layer is still present at its output.

        survival = time_share(out) / time_share(in)

    0 when the layer removes the time-induced variation exactly (BatchNorm after a per-channel time
    offset), about 1 when it passes it on in proportion to everything else; it can exceed 1 when the
    layer removes more of the other variation than of the time signal. Each share is relative to its
    own slice's total variance, so the ratio does not depend on the scale of input or output, nor
    on the per-slice rescaling every normalisation applies.
    None when the input's share is at or below ``floor``: no time signal reached the layer.
    acts_in, acts_out: (times, *shape).
    """
    share_in = time_share(acts_in)
    if share_in <= floor:
        return None
    return time_share(acts_out) / share_in


def offset_fraction(units: torch.Tensor) -> float:
    """Fraction of the time signal that is constant within each normalisation unit.

    With D[k, u, s] = a[k, u, s] - mean_k a[k, u, s] the time-induced deviation of element s of unit u,
        fraction = mean_{k,u} (mean_s D[k, u, s])²  /  mean_{k,u,s} D[k, u, s]².
    A mean-subtracting normalisation removes exactly the numerator's part, so a fraction of 1
    means the time signal is a per-unit offset that the normalisation cancels (Kim et al. 2024, Eq. 5).
    NaN when nothing varies with time.
    units: (times, units, elements per unit).
    """
    u = units.detach().to(torch.float64)
    deviation = u - u.mean(dim=0, keepdim=True)
    v_time = deviation.pow(2).mean()
    if v_time == 0:
        return math.nan
    return float(deviation.mean(dim=-1).pow(2).mean() / v_time)


def output_sensitivity(outputs: torch.Tensor) -> float:
    """Relative change of a model's output across times at a fixed input.

        sensitivity = sqrt( mean_{k,e} (y[k, e] - mean_k y[k, e])²  /  mean_{k,e} y[k, e]² )

    i.e. the RMS deviation from the time-average, relative to the RMS output: 0 when the output
    does not depend on t. 0 for an all-zero output. outputs: (times, *shape).
    """
    y = outputs.detach().to(torch.float64).reshape(outputs.shape[0], -1)
    power = y.pow(2).mean()
    if power == 0:
        return 0.0
    return float(torch.sqrt(y.var(dim=0, unbiased=False).mean() / power))
