"""Post-hoc EMA sweeps: reconstruct many profile widths from one run's snapshots, score each, and save
the curve (CSV + plot with the optimum marked), as in the paper's Fig. 5."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .posthoc import posthoc_reconstruct
from .profiles import check_sigma_rel

__all__ = ["parse_sweep", "sweep_sigma_rels", "write_sweep"]


MAX_SWEEP_VALUES = 1000  # each value is one reconstruction and one sampled FD: more is a typo, not a sweep
_SWEEP_FORM = "start:stop:step, e.g. 0.02:0.20:0.01"


def parse_sweep(text: str) -> list[float]:
    """'start:stop:step' (stop included when on the grid), e.g. '0.02:0.20:0.01' → [0.02, 0.03, ..., 0.20].

    Refused, with the expected form: other than three finite numbers, step <= 0, stop < start, or more
    than ``MAX_SWEEP_VALUES`` values (a step of 1e-11 would otherwise allocate billions of floats).
    """
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"--sweep must be {_SWEEP_FORM}, got {text!r}")
    start, stop, step = (_sweep_number(text, name, part) for name, part in zip(("start", "stop", "step"), parts))
    if not step > 0:
        raise ValueError(f"--sweep step must be > 0, got {text!r}; expected {_SWEEP_FORM}")
    if stop < start:
        raise ValueError(f"--sweep stop must be >= start, got {text!r}; expected {_SWEEP_FORM}")
    intervals = (stop - start) / step + 1e-9  # may overflow to inf: compared as a float, floored only when small
    if not intervals < MAX_SWEEP_VALUES:
        raise ValueError(f"--sweep {text!r} gives {intervals + 1:.3g} values, more than the {MAX_SWEEP_VALUES} "
                         f"allowed (each is one reconstruction and one FD); use a larger step, e.g. "
                         f"{(stop - start) / 20:.3g}")
    count = math.floor(intervals) + 1
    values = [round(start + i * step, 10) for i in range(count)]
    for value in values:
        check_sigma_rel(value, "--sweep values")
    return values


def _sweep_number(text: str, name: str, part: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise ValueError(f"--sweep {name} {part!r} is not a number: --sweep must be {_SWEEP_FORM}, "
                         f"got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"--sweep {name} must be finite, got {part!r} in {text!r}; expected {_SWEEP_FORM}")
    return value


def sweep_sigma_rels(
    directory: str | os.PathLike,                               # snapshot directory of one run
    sigma_rels: Sequence[float],                                # widths to reconstruct
    score: Callable[[dict[str, torch.Tensor], float], float],  # (state_dict, σ_rel) → score, lower is better
    step: int | None = None,                                    # reconstruction step; None: the last snapshot
) -> list[dict]:
    """[{"sigma_rel", "score"}, ...]: one reconstruction and one score per width (one model in memory at a time)."""
    rows = []
    for sigma_rel in sigma_rels:
        state = posthoc_reconstruct(directory, sigma_rel, step)
        rows.append({"sigma_rel": float(sigma_rel), "score": float(score(state, sigma_rel))})
        del state
    return rows


def write_sweep(rows: list[dict], out_dir: str | os.PathLike, score_name: str = "fd",
                reference: dict[str, float] | None = None) -> dict[str, Path]:
    """Write ``sweep.csv`` and ``sweep.png`` (score vs σ_rel, optimum marked, optional horizontal
    reference lines such as the real-data floor) to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "sweep.csv", out / "sweep.png"
    with open(csv_path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["sigma_rel", score_name])
        writer.writerows([[f"{r['sigma_rel']:.4f}", f"{r['score']:.6g}"] for r in rows])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = min(rows, key=lambda r: r["score"])
    figure, axes = plt.subplots(figsize=(5, 3.4))
    axes.plot([r["sigma_rel"] for r in rows], [r["score"] for r in rows], "o-", ms=3, label="post-hoc EMA")
    axes.plot([best["sigma_rel"]], [best["score"]], "r*", ms=12,
              label=f"optimum σ_rel = {best['sigma_rel']:.3f} ({score_name} {best['score']:.3g})")
    for name, value in (reference or {}).items():
        axes.axhline(value, ls="--", lw=1, color="gray")
        axes.annotate(name, (rows[0]["sigma_rel"], value), textcoords="offset points", xytext=(2, 3), fontsize=8)
    axes.set_xlabel("EMA length σ_rel")
    axes.set_ylabel(score_name)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return {"csv": csv_path, "png": png_path}
