"""The report of ``seed004_convergence.py``: tables, plots and generated notes from its combined raw file.

Raw format: {"command", "config", "machine", "floor", "runs": [{"strategy", "seed", "curve": [{"iteration",
"fd", "seconds", "cpu_seconds", "t_histogram"?}], "iterations", "seconds", "cpu_seconds",
"reward_records"?}], "overhead"?: seed004_digits.measure_overhead's record}.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convergence_stats import (  # noqa: E402
    iterations_to_threshold,
    mean_curve_with_interval,
    paired_difference,
    t_interval,
)

from reporting import RESULTS_DIR, Table, raw_machine, save_report  # noqa: E402

NAME = "seed004_convergence"
REWARD_SPLIT = 1000  # the reward table splits the sampler updates at this iteration (early: the policy moves)
MAIN = ["uniform", "importance", "speed", "min-snr", "adaptive"]
COMPARISONS = [("adaptive", "uniform"), ("adaptive", "speed"), ("speed", "uniform"), ("importance", "uniform"),
               ("min-snr", "uniform"), ("adaptive-std", "uniform"), ("adaptive-std", "adaptive")]


def _interval(mean: float, low: float, high: float, digits: int = 0) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:.{digits}f} (one seed)"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def strategies(raw: dict) -> list[str]:
    present = {r["strategy"] for r in raw["runs"]}
    return [s for s in MAIN if s in present] + sorted(present - set(MAIN))


def reached(raw: dict, strategy: str, factor: float) -> dict[int, int | None]:
    """seed ↦ the first evaluated iteration with FD <= factor × floor (None: not within the run)."""
    return {r["seed"]: iterations_to_threshold(r["curve"], factor * raw["floor"])
            for r in raw["runs"] if r["strategy"] == strategy}


def iterations_table(raw: dict) -> Table:
    """Per strategy: iterations to each threshold (mean and t-interval over the seeds that reached it)."""
    factors, rows = raw["config"]["factors"], []
    cpu = {}
    for strategy in strategies(raw):
        runs = [r for r in raw["runs"] if r["strategy"] == strategy]
        row = [strategy]
        for factor in factors:
            per_seed = reached(raw, strategy, factor)
            known = [v for v in per_seed.values() if v is not None]
            cell = _interval(*t_interval(known)) if known else "n/a"
            row.append(f"{cell} ({len(known)}/{len(per_seed)})")
        cpu[strategy] = sum(r["cpu_seconds"] for r in runs) / sum(r["iterations"] for r in runs)
        rows.append(row + [1000 * cpu[strategy]])
    for row in rows:
        row.append(f"{100 * (cpu[row[0]] / cpu.get('uniform', math.nan) - 1):+.0f} %")
    columns = ["strategy", *(f"iterations to {f:g}× floor: mean [95 % t-interval] (seeds reached)" for f in factors),
               "CPU ms/iteration", "vs uniform"]
    config = raw["config"]
    caption = (f"FD (digits features, {config['num_samples']} samples, DDIM-{config['ddim_steps']}, EMA "
               f"{config['ema_decay']}) every {config['eval_every']} iterations; floor at N = {config['num_samples']}: "
               f"{raw['floor']:.2f}; batch {config['batch_size']}, width {config['width']}, lr {config['lr']}; "
               f"a run stops at {min(factors):g}× floor or {config['max_iterations']} iterations; intervals over the "
               "seeds that reached the threshold")
    return Table(columns, rows, caption)


def per_seed_table(raw: dict) -> Table:
    seeds = sorted({r["seed"] for r in raw["runs"]})
    rows = []
    for factor in raw["config"]["factors"]:
        for strategy in strategies(raw):
            per_seed = reached(raw, strategy, factor)
            rows.append([f"{factor:g}×", strategy,
                         *(per_seed.get(s) if per_seed.get(s) is not None else ("–" if s in per_seed else "")
                           for s in seeds)])
    return Table(["threshold", "strategy", *(f"seed {s}" for s in seeds)], rows,
                 "iterations to the threshold per seed (–: not reached within the run; blank: not run)")


def paired(raw: dict, factor: float, a: str, b: str) -> dict:
    return paired_difference(reached(raw, a, factor), reached(raw, b, factor))


def paired_table(raw: dict) -> Table:
    present = set(strategies(raw))
    rows = []
    for a, b in COMPARISONS:
        if not {a, b} <= present:
            continue
        row = [f"{a} − {b}"]
        for factor in raw["config"]["factors"]:
            result = paired(raw, factor, a, b)
            row += [_interval(result["mean"], result["low"], result["high"]), len(result["seeds"])]
        rows.append(row)
    columns = ["comparison"]
    for factor in raw["config"]["factors"]:
        columns += [f"Δ iterations to {factor:g}× floor, mean [95 % t-interval]", "paired seeds"]
    return Table(columns, rows, "paired by seed (same initialisation and data order); negative: the first "
                 "strategy is faster; seeds where either did not reach the threshold are left out")


def _mean(records: list[dict], key: str) -> float:
    values = [rec[key] for rec in records if rec.get(key) is not None]
    return sum(values) / len(values) if values else math.nan


def _numbered_records(raw: dict, run: dict) -> list[tuple[int, dict]]:
    """(iteration, record) of each sampler update of ``run``, the record joined with the sd of the minibatch
    loss's change between iterations over the evaluation window that holds it."""
    every, numbered = raw["config"]["update_every"], []
    for i, record in enumerate(run.get("reward_records", [])):
        iteration = every * (i + 1)  # one record per sampler update, at iterations f_S, 2 f_S, ...
        window = next((p for p in run["curve"] if p["iteration"] >= iteration), None)
        numbered.append((iteration, {**record, "loss_change_sd": window and window["loss_change_sd"]}))
    return numbered


def reward_table(raw: dict) -> Table:
    """The reward's size and sign against the noise of what it measures, early and late in training."""
    split, rows = REWARD_SPLIT, []
    for strategy in [s for s in strategies(raw) if s.startswith("adaptive")]:
        numbered = [item for r in raw["runs"] if r["strategy"] == strategy for item in _numbered_records(raw, r)]
        for phase, records in ((f"≤ {split}", [rec for it, rec in numbered if it <= split]),
                               (f"> {split}", [rec for it, rec in numbered if it > split])):
            if not records:
                continue
            correlation = t_interval([rec["reward_t_correlation"] for rec in records])
            relative_loss_noise = _mean(records, "loss_change_sd") / _mean(records, "loss")
            rows.append([strategy, phase, len(records), _mean(records, "reward_mean"),
                         _mean(records, "reward_abs_mean"), f"{100 * _mean(records, 'positive_fraction'):.0f} %",
                         _mean(records, "bound_noise_sd"),
                         _mean(records, "reward_abs_mean") / _mean(records, "bound_noise_sd"),
                         _interval(*correlation, digits=3),
                         _mean(records, "reward_abs_mean") / _mean(records, "bound_mean"), relative_loss_noise])
    return Table(["strategy", "iterations", "updates", "mean R", "mean |R|", "R > 0", "noise sd of Σ_S L_τ",
                  "mean |R| / noise sd", "corr(R, t) over the batch, mean [95 %]", "mean |R| / Σ_S L_τ",
                  "sd of the ε-loss change between iterations / ε-loss"], rows,
                 "R: the reward Σ_{τ∈S} ΔL_τ (bits/dim) of each sample at every sampler update, pooled over seeds; "
                 "the noise of Σ_S L_τ is the per-sample spread between two fresh noise draws on the same images; "
                 "corr(R, t) is the part of R that REINFORCE can attribute to the action; the last two columns "
                 "set the relative drop the reward measures against the relative noise of the training loss")


def policy_table(raw: dict, iterations=(100, 500, 1000, 1500, 2000)) -> Table:
    """The drawn timestep distribution at a few iterations (mean over the seeds still running)."""
    T, rows = raw["config"]["num_timesteps"], []
    for strategy in strategies(raw):
        runs = [r for r in raw["runs"] if r["strategy"] == strategy]
        for iteration in iterations:
            histograms = [p["t_histogram"] for r in runs for p in r["curve"]
                          if p["iteration"] == iteration and "t_histogram" in p]
            if not histograms:
                continue
            bins = len(histograms[0])
            mean = [sum(h[i] for h in histograms) / len(histograms) for i in range(bins)]
            centres = [(i + 0.5) * T / bins for i in range(bins)]
            distance = sum(0.5 * sum(abs(h_i - 1 / bins) for h_i in h) for h in histograms) / len(histograms)
            rows.append([strategy, iteration, len(histograms), sum(c * m for c, m in zip(centres, mean)), distance,
                         f"{100 * sum(mean[: bins // 10]):.0f} %", f"{100 * sum(mean[7 * bins // 10:]):.0f} %"])
    return Table(["strategy", "iteration", "seeds", "mean t", "total variation from uniform (per seed, mean)",
                  "P(t < 0.1 T)", "P(t ≥ 0.7 T)"], rows,
                 "t drawn 4 times per image of the training pool (5748 draws in 20 bins); uniform gives mean t "
                 "≈ 500, P = 10 % and 30 %, and a total variation of about 0.02 from the finite draws alone")


def overhead_table(raw: dict) -> Table | None:
    overhead = raw.get("overhead")
    if overhead is None:
        return None
    per_iteration = overhead["seconds_per_iteration"]
    return Table(["uniform ms/iteration", "adaptive ms/iteration", "updater ms/iteration", "overhead of adaptive"],
                 [[1000 * per_iteration["uniform"], 1000 * per_iteration["adaptive"],
                   1000 * overhead["updater_seconds_per_iteration"], f"{100 * overhead['overhead']:+.0f} %"]],
                 f"wall time, {overhead['iterations']} iterations of each interleaved in one process, "
                 f"f_S = {overhead['update_every']}, the model and batch of the runs above")


def verdict(raw: dict) -> list[str]:
    """Plain sentences on the paper's claim, generated from the paired intervals."""
    notes = []
    for factor in raw["config"]["factors"]:
        for other in ("uniform", "speed"):
            if not {"adaptive", other} <= set(strategies(raw)):
                continue
            result = paired(raw, factor, "adaptive", other)
            if math.isnan(result["low"]):
                notes.append(f"adaptive vs {other} at {factor:g}× floor: too few paired seeds for an interval.")
                continue
            if result["high"] < 0:
                word = "faster (the interval excludes 0)"
            elif result["low"] > 0:
                word = "slower (the interval excludes 0)"
            else:
                word = "not distinguishable (the interval contains 0)"
            notes.append(f"Adaptive vs {other}, iterations to {factor:g}× floor: {result['mean']:+.0f} "
                         f"[{result['low']:+.0f}, {result['high']:+.0f}] over {len(result['seeds'])} paired seeds: "
                         f"{word}.")
    return notes


def plot_curves(raw: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.8, 4.4))
    for index, strategy in enumerate(strategies(raw)):
        points = [p for p in mean_curve_with_interval([r["curve"] for r in raw["runs"] if r["strategy"] == strategy])
                  if p["n"] >= 3]  # a t-interval from 2 runs spans decades on this axis
        if not points:
            continue
        iterations = [p["iteration"] for p in points]
        axis.plot(iterations, [p["mean"] for p in points], color=f"C{index}", label=strategy)
        axis.fill_between(iterations, [max(p["low"], raw["floor"] / 2) for p in points], [p["high"] for p in points],
                          color=f"C{index}", alpha=0.15)
    for factor in raw["config"]["factors"]:
        axis.axhline(factor * raw["floor"], color="grey", linestyle=":", linewidth=1)
    axis.axhline(raw["floor"], color="grey", linestyle="--", label="real-data floor")
    axis.set(xlabel="training iteration", ylabel="FD (digits features)", yscale="log",
             ylim=(raw["floor"] / 2, 1000), title="Mean FD ± 95 % t-interval over seeds (runs still going, ≥ 3)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_policy(raw: dict, path: Path) -> None:
    """Heatmaps of the timestep distribution over training (seed means) for the samplers that move it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = [s for s in strategies(raw) if any("t_histogram" in p for r in raw["runs"] if r["strategy"] == s
                                                 for p in r["curve"])]
    figure, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6), squeeze=False, layout="constrained")
    for axis, strategy in zip(axes[0], shown):
        by_iteration: dict[int, list[list[float]]] = {}
        for r in raw["runs"]:
            if r["strategy"] == strategy:
                for p in r["curve"]:
                    by_iteration.setdefault(p["iteration"], []).append(p["t_histogram"])
        iterations = sorted(i for i in by_iteration if len(by_iteration[i]) >= 2) or sorted(by_iteration)
        matrix = np.array([np.mean(by_iteration[i], axis=0) for i in iterations])
        bins = matrix.shape[1]
        image = axis.imshow(matrix.T * bins, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=3,
                            extent=[iterations[0], iterations[-1], 0, raw["config"]["num_timesteps"]])
        axis.set(title=strategy, xlabel="iteration", ylabel="t")
    figure.colorbar(image, ax=axes[0].tolist(), label="density / uniform")
    figure.suptitle("Timestep distribution drawn over the training pool (mean over seeds)", fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _loosest_note(raw: dict) -> list[str]:
    """How soon the five strategies reached the loosest threshold (why the runs went on to stricter ones)."""
    loosest = max(raw["config"]["factors"])
    per_run = [v for s in MAIN for v in reached(raw, s, loosest).values()]
    if not per_run or None in per_run:
        return []
    return [f"Every run of the five strategies reached {loosest:g}× floor within {max(per_run)} iterations, so "
            "the runs continued to the stricter thresholds."]


def save_convergence_report(raw: dict) -> Path:
    plot_curves(raw, RESULTS_DIR / f"{NAME}.png")
    plot_policy(raw, RESULTS_DIR / f"{NAME}_policy.png")
    tables = [iterations_table(raw), per_seed_table(raw), paired_table(raw), policy_table(raw), reward_table(raw)]
    overhead = overhead_table(raw)
    if overhead is not None:
        tables.append(overhead)
    notes = verdict(raw) + _loosest_note(raw) + [
        "Model: DDPM, ε-prediction, T = 1000, quad β; DDPMUNet (mult (1, 2), one block per level, no attention) "
        "with the seed-001 fixes; FD on the EMA weights. Every strategy of a seed starts from the same weights and "
        "sees the same batches.",
        "Intervals are Student-t intervals of the mean over seeds (n − 1 degrees of freedom); the paired ones are "
        "over the per-seed differences. Iterations are those of the first evaluation at or below the threshold, "
        f"so they carry a resolution of {raw['config']['eval_every']} iterations.",
        "CPU ms/iteration is the thread CPU time of the training step (sampler update included, FD evaluation "
        "excluded), which load on the shared machine inflates less than wall time.",
        "adaptive-std is the learned sampler with its reward standardised over the batch before the policy step; "
        "the paper's released code (ddpm_torch/utils/train.py, Trainer.step) uses the raw Σ ΔKL plus the entropy "
        "term, with no normalisation and no baseline.",
    ]
    return save_report(NAME, "Seed 004 at convergence on digits: iterations to a fixed FD, five timestep strategies",
                       tables, notes=notes, plots=[f"{NAME}.png", f"{NAME}_policy.png"], command=raw["command"],
                       machine=raw_machine(raw, threads=raw["config"]["threads"]))
