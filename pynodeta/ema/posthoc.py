"""Post-hoc EMA reconstruction (Karras et al. 2024, Sec. 3.2 and App. C.3; NVlabs/edm2 phema.py and
reconstruct_phema.py): any profile width σ_rel at any snapshot step, as a least-squares combination
of the power-function profiles stored during training."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from .profiles import check_sigma_rel, power_function_correlation, sigma_rel_to_gamma
from .snapshots import SnapshotInfo, list_snapshots, load_snapshot

__all__ = ["posthoc_coefficients", "posthoc_reconstruct"]


def posthoc_coefficients(
    in_steps: Sequence[int],          # step of each stored profile
    in_sigma_rels: Sequence[float],   # σ_rel of each stored profile
    out_step: int,                    # step of the profile to reconstruct
    out_sigma_rel: float,             # σ_rel of the profile to reconstruct
) -> np.ndarray:
    """Weights x (n_in,) with θ* ≈ Σ x_i θ_i: the stored profiles' combination closest in L² to the target
    profile. A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p*⟩, solve A x = b, then normalise Σ x = 1 (Algorithm 3)."""
    steps = np.asarray(in_steps, dtype=np.float64).reshape(-1)
    sigma_rels = np.asarray(in_sigma_rels, dtype=np.float64).reshape(-1)
    if steps.shape != sigma_rels.shape or steps.size == 0:
        raise ValueError(f"in_steps and in_sigma_rels must be non-empty and of equal length, got {steps.size} "
                         f"and {sigma_rels.size}")
    # NaN compares False with everything, so "< 1" alone would let it through into NaN weights
    if not np.all(np.isfinite(steps)) or np.any(steps < 1):
        raise ValueError(f"in_steps must all be finite and >= 1 (the training step each profile was stored "
                         f"at), got {steps.tolist()}")
    if not math.isfinite(float(out_step)) or out_step < 1:
        raise ValueError(f"out_step must be finite and >= 1 (the training step to reconstruct at), got {out_step}")
    pairs = list(zip(steps.tolist(), sigma_rels.tolist()))
    if len(set(pairs)) != len(pairs):
        raise ValueError("the stored profiles repeat a (step, sigma_rel) pair, which makes the fit singular; "
                         "pass each stored profile once")
    gammas = np.array([sigma_rel_to_gamma(s) for s in sigma_rels])
    out_gamma = sigma_rel_to_gamma(check_sigma_rel(out_sigma_rel, "out_sigma_rel"))
    gram = power_function_correlation(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    target = power_function_correlation(steps, gammas, float(out_step), out_gamma)
    weights = np.linalg.solve(gram, target)
    return weights / weights.sum()


@torch.no_grad()
def posthoc_reconstruct(
    directory: str | os.PathLike,   # where PowerFunctionEMA.save_snapshot wrote phema-<step>.pt files
    sigma_rel: float,               # profile width to reconstruct
    step: int | None = None,        # training step to reconstruct at; None: the last snapshot's
) -> dict[str, torch.Tensor]:
    """The model state_dict of the EMA with width ``sigma_rel`` at ``step``, from all snapshots up to it.

    Streams over the files (memory-mapped): memory is one accumulated model plus the tensors being
    read. Floating-point entries are combined; the others (integer buffers) come from the last
    snapshot used. Like the released code, only snapshots at or before ``step`` enter the fit.
    """
    check_sigma_rel(sigma_rel)
    infos = list_snapshots(directory)
    last = infos[-1].step
    target_step = last if step is None else int(step)
    if target_step > last:
        raise ValueError(f"step {target_step} is beyond the last snapshot (step {last}); pass step <= {last} "
                         "or step=None for the last snapshot")
    used = [info for info in infos if info.step <= target_step]
    if not used:
        raise ValueError(f"no snapshot at or before step {target_step} (first is {infos[0].step})")
    entries = [(info, index) for info in used for index in range(len(info.sigma_rels))]
    weights = posthoc_coefficients([info.step for info, _ in entries],
                                   [info.sigma_rels[index] for info, index in entries], target_step, sigma_rel)
    result: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    position = 0
    for info in used:
        payload = load_snapshot(info.path)
        for profile in payload["profiles"]:
            _check_profile(profile["state_dict"], info, profile["sigma_rel"])
            _accumulate(result, dtypes, profile["state_dict"], float(weights[position]))
            position += 1
        del payload
    return {name: value.to(dtypes[name]) for name, value in result.items()}


def _check_profile(state: dict[str, torch.Tensor], info: SnapshotInfo, sigma_rel: float) -> None:
    """Each profile must hold exactly the tensors its file's fingerprint lists, finite: a profile missing a
    tensor would otherwise be rebuilt from the other snapshots alone, a NaN one would poison every width."""
    expected = [(name, tuple(shape), dtype) for name, shape, dtype in info.fingerprint]
    found = [(name, tuple(value.shape), str(value.dtype)) for name, value in state.items()]
    if found != expected:
        missing = sorted({e[0] for e in expected} - {f[0] for f in found})
        what = f"lacks {missing[0]}" if missing else "does not match the file's fingerprint (names, shapes, dtypes)"
        raise ValueError(f"snapshot {info.path.name}: the profile σ_rel {sigma_rel:g} {what}; the file is damaged or "
                         f"was edited, remove it from the folder")
    for name, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"snapshot {info.path.name}: {name} of the profile σ_rel {sigma_rel:g} holds NaN or Inf "
                             f"(the run diverged before step {info.step}); reconstruct at an earlier --step")


def _accumulate(result: dict, dtypes: dict, state: dict[str, torch.Tensor], weight: float) -> None:
    for name, value in state.items():
        if not value.is_floating_point():
            result[name] = value.clone()
            dtypes[name] = value.dtype
            continue
        if name not in result:
            dtypes[name] = value.dtype
            result[name] = torch.zeros(value.shape, dtype=torch.promote_types(value.dtype, torch.float32))
        result[name].add_(value.to(result[name].dtype), alpha=weight)
