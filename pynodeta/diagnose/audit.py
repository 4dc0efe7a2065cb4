"""``time_awareness``: where does the timestep signal of a ``forward(t, x)`` model die?

Seed 001 (Kim et al. 2024): ConcatConv and additive timestep embeddings inject t as a per-channel
offset; a per-channel normalisation after them (BatchNorm, InstanceNorm, GroupNorm with G = C)
subtracts exactly that offset, and the layer's output no longer depends on t. The audit runs the
model at one fixed input for several times, records every module through hooks, and reports

* time entries: pynodeta's time-injecting layers by type, and any module whose output varies with
  t while its input does not (or, for a module taking (t, x), when re-run at a fixed x);
* for every normalisation after an entry: the measured survival ratio and how much of the incoming
  time signal is a per-unit offset (the part its mean subtraction removes by construction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from pynodeta.nn import is_time_aware, no_stat_updates

from .entries import inside, time_entries
from .estimators import noise_floor, offset_fraction, output_sensitivity, survival_ratio, time_share
from .layers import normalization_units, uses_running_statistics
from .recording import (
    Site,
    flat_floating,
    preserved_state,
    record_over_times,
    share,
    stacked,
    state_tensor,
)
from .report import Finding, TimeAwarenessReport

__all__ = ["time_awareness", "DEFAULT_TIMES"]

DEFAULT_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)
PRESERVED = 0.5         # survival at or above this is "preserved", below it (and >= threshold) "partial"
_EXACT = 1e-6           # offset fraction within this of 1: the time signal is a per-unit offset


def time_awareness(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...],
    times: Sequence[float] = DEFAULT_TIMES,
    *,
    mode: Literal["eval", "train"] = "eval",   # the mode the model is run in (see below)
    threshold: float = 0.05,                   # survival below this counts as "cancelled"
    seed: int = 0,                             # RNG seed reset before every time (same dropout masks)
    subject: str = "<model>",                  # name of the audited model in the report
) -> TimeAwarenessReport:
    """Audit a model's time awareness at one fixed input.

    model: any module with forward(t, x); it is called as ``model(t, x)`` with t a 0-d tensor of
        x's dtype and device, once per time, under ``torch.no_grad()``.
    x: (batch, ...) — or a tuple of such (a tuple ODE state) — held fixed while t varies. Use a
        real batch of a few samples (>= 2 for BatchNorm-type layers); memory is len(times) copies
        of every module's input and output.
    times: at least two distinct finite times, e.g. a grid over the ODE's span.

    Survival ratio of a normalisation: time_share(output) / time_share(input), where time_share is
    the across-time variance of each element averaged over elements, divided by the total variance
    (``estimators.time_share``): about 0 when the layer cancels time exactly, about 1 when it keeps
    it; scale-invariant. A finding is "cancelled" when survival < ``threshold``, "partial" when it is
    below 0.5, "preserved" otherwise. ``vanishing`` is True if any finding is cancelled, or the
    model's output does not change with t at all.

    Mode: "eval" (default) audits the function the model computes at inference, with dropout off.
    BatchNorm-type layers then normalise with running statistics, a fixed per-channel affine map that
    lets a time offset through — yet in training, where the weights learn, batch statistics cancel
    it. So those layers are measured in a second pass in which they alone use batch statistics (as
    in training), and their eval-mode value is reported as ``survival_running_stats``.
    "train" runs the whole model in train mode (batch statistics everywhere, dropout on with the
    same mask at every time). Either way the model's parameters, buffers, training flags and public
    attributes are restored afterwards, and the global RNG state is left untouched.
    """
    times = _check_arguments(model, x, times, mode, threshold)
    like = state_tensor(x)
    floor = noise_floor(like.dtype)
    with preserved_state(model), torch.no_grad(), no_stat_updates():
        model.train(mode == "train")
        sites, outputs = record_over_times(model, x, times, seed, keep_calls=is_time_aware)
        entries = time_entries(model, sites, times, floor, seed)
        batch_sites = _with_batch_statistics(model, x, times, seed, sites)
        norms = _normalisation_findings(sites, batch_sites, entries, floor, threshold)
    sensitivity = output_sensitivity(torch.stack([flat_floating(y) for y in outputs]))
    findings = sorted([*entries.values(), *norms], key=lambda item: item[0])
    vanishing = any(f.verdict == "cancelled" for _, f in findings) or sensitivity <= math.sqrt(floor)
    return TimeAwarenessReport([f for _, f in findings], sensitivity, vanishing, tuple(times), mode,
                               threshold, subject)


def _with_batch_statistics(model, x, times, seed, sites: dict) -> dict:
    """{key: site} of the layers that ran on running statistics, recorded again in a pass where
    they alone use batch statistics (as in training). Empty when there are none, or when batch
    statistics are undefined (one sample, no spatial extent): those layers then keep their as-run
    measurement."""
    running = {key for key, site in sites.items() if uses_running_statistics(site.module)}
    if not running:
        return {}
    for key in running:
        sites[key].module.train()
    try:
        again, _ = record_over_times(model, x, times, seed, keep_calls=lambda module: False)
    except ValueError:
        return {}
    return {key: again[key] for key in running}


def _check_arguments(model, x, times, mode, threshold) -> list[float]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module with forward(t, x), got {type(model).__name__}")
    if state_tensor(x) is None:
        raise TypeError(f"x must be a floating tensor (or a tuple of them), got {type(x).__name__}")
    if torch.finfo(state_tensor(x).dtype).bits < 32:
        # 16-bit round-off (eps ~1e-3) is as large as the time signals the audit must tell from zero
        raise ValueError(f"x has dtype {state_tensor(x).dtype}; audit a float32 copy instead "
                         f"(model.float(), x.float())")
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    if not (isinstance(threshold, (int, float)) and 0 < threshold < PRESERVED):
        raise ValueError(f"threshold must be a number in (0, {PRESERVED}), got {threshold!r}")
    times = [float(t) for t in torch.as_tensor(times, dtype=torch.float64).reshape(-1)]
    if not all(math.isfinite(t) for t in times):
        raise ValueError(f"times must be finite, got {times}")
    if len(set(times)) < 2:
        raise ValueError(f"times must hold at least two distinct values, got {times}")
    return times


def _normalisation_findings(sites: dict, batch_sites: dict, entries: dict, floor, threshold) -> list:
    first_entry = min((order for order, _ in entries.values()), default=math.inf)
    findings = []
    for key, site in sorted(sites.items(), key=lambda item: item[1].order):
        spec = normalization_units(site.module)
        if spec is None:
            continue
        measured = batch_sites.get(key, site)
        if share(measured.inputs) <= floor and (site.order <= first_entry or key in entries):
            continue  # before any time entry (or a TA-BN on a time-free input: reported as an entry)
        as_run = survival_ratio(stacked(site.inputs), stacked(site.outputs), floor) if key in batch_sites else None
        reinjects = key in entries and entries[key][1].injects
        findings.append((site.order, _normalisation_finding(measured, spec, as_run, reinjects, entries, floor,
                                                            threshold)))
    return findings


def _normalisation_finding(site: Site, spec, as_run, reinjects, entries, floor, threshold) -> Finding:
    inputs, outputs = stacked(site.inputs), stacked(site.outputs)
    survival = survival_ratio(inputs, outputs, floor)
    fraction = None
    if survival is not None and spec.units is not None:
        fraction = offset_fraction(spec.units(inputs))
    verdict = _verdict(survival, threshold)
    entry = _nearest_entry(site, entries)
    return Finding(
        site.label, type(site.module).__name__, "normalisation", verdict,
        _message(verdict, survival, as_run, reinjects, spec, fraction, entry),
        survival=survival, survival_running_stats=as_run,
        structural=_structural(spec, fraction, type(site.module).__name__), offset_fraction=fraction,
        time_share_in=time_share(inputs), time_share_out=time_share(outputs),
        entry=None if entry is None else entry.layer,
    )


def _verdict(survival: float | None, threshold: float) -> str:
    if survival is None:
        return "no signal"
    if survival < threshold:
        return "cancelled"
    return "partial" if survival < PRESERVED else "preserved"


def _structural(spec, fraction: float | None, kind: str) -> str | None:
    if spec.units is None:
        return f"{kind} subtracts no mean: a time offset is rescaled, not removed"
    if fraction is None or not math.isfinite(fraction):
        return None
    if fraction >= 1 - _EXACT:
        return f"the time signal is constant over each unit ({spec.unit}): the mean subtraction removes it"
    return f"{fraction:.1%} of the time signal is constant over each unit ({spec.unit}) and removed"


def _message(verdict: str, survival, as_run, reinjects: bool, spec, fraction, entry: Finding | None) -> str:
    if verdict == "no signal":
        return "no time signal reaches this layer: it was cancelled upstream"
    text = {
        "cancelled": f"timestep embedding cancelled here (survival {survival:.2g})",
        "partial": f"time survives only partially (survival {survival:.2g})",
        "preserved": f"time survives (survival {survival:.2g})",
    }[verdict]
    if fraction is not None and fraction >= 1 - _EXACT and verdict == "cancelled":
        text += f": the incoming time signal is an offset per {spec.unit}"
    elif fraction is not None and fraction > 0.5 and verdict != "preserved":
        rest = "the zero-padding border" if entry is not None and "zero-padding" in entry.message \
            else "the part not constant over a unit"
        text += f": {fraction:.1%} of the incoming time signal is an offset per {spec.unit}; only {rest} passes"
    if reinjects and verdict != "cancelled":
        text += "; γ(t), β(t) put time back"
    if as_run is not None:
        text += f" — with batch statistics, as in training; eval-mode running statistics give {as_run:.2g}"
        if verdict == "cancelled":
            text += " (an offset at inference that training never let the weights use)"
    return text


def _nearest_entry(site: Site, entries: dict) -> Finding | None:
    """The last time entry to finish before this layer, else the innermost entry enclosing it."""
    before = [(order, f) for key, (order, f) in entries.items()
              if order < site.order and key != (site.name, site.call)]
    if before:
        return max(before, key=lambda item: item[0])[1]
    enclosing = [(key[0], f) for key, (_, f) in entries.items() if inside(site.name, key[0])]
    return max(enclosing, key=lambda item: len(item[0]))[1] if enclosing else None
