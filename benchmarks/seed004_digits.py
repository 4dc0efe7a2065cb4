"""Seed 004 in miniature on the 8×8 digits: FD vs training iterations for five timestep strategies.

DDPM with ε-prediction (T = 1000, seed 004's quad β schedule) and a tiny DDPMUNet, trained with
  uniform     t ~ U[0, T), weight 1 (DDPM)
  importance  Improved-DDPM's LossSecondMomentSampler on the per-sample loss, weights 1/(T p_t)
  speed       SpeeD's asymmetric sampling and change-aware weights (k = 5, λ = 0.6, τ = 0.7 T)
  min-snr     uniform t, Min-SNR-5 weight for ε-prediction
  adaptive    seed 004's learned sampler π(t | x0), updated every f_S iterations from the VLB drop
and the Fréchet distance (DDIM sampling, the digits feature extractor of pynodeta.metrics) every
``--eval-every`` iterations, beside the real-data floor (training pool vs test features).

    nice -n 10 python benchmarks/seed004_digits.py --iterations 500 --eval-every 100 --seeds 0
    nice -n 10 python benchmarks/seed004_digits.py --overhead 120      # adaptive vs uniform, interleaved

Saves the report benchmarks/results/seed004_digits.json (or seed004_digits_overhead.json; rendered into
docs/results.md) with the FD curves' .png, and the raw runs to --out (default benchmarks/results/raw/), which
``--combine`` merges; ``--from-raw FILE`` rebuilds the report from one raw file without training. Wall times
come from whatever machine runs it; on a shared machine the overhead ratio is the meaningful number.

Its 500-iteration report is superseded by ``seed004_convergence.py`` (the same strategies trained to a fixed
FD, five seeds), which reuses this script's ``Run``, ``METHODS`` and ``measure_overhead``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from pynodeta.data.sampling import stratified_split
from pynodeta.diffusion import DDPMSchedule, sample_ddim
from pynodeta.diffusion.loss_weighting import make_loss_weighting
from pynodeta.diffusion.timestep_samplers import LossAwareSampler, make_timestep_sampler
from pynodeta.metrics import DigitsFeatureExtractor, frechet_distance
from pynodeta.models.diffusion.ddpm_unet import DDPMUNet
from pynodeta.train.adaptive_timesteps import AdaptiveTimestepUpdater, ddpm_vb_terms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import (  # noqa: E402
    RAW_DIR,
    RESULTS_DIR,
    Table,
    add_from_raw,
    command_line,
    raw_machine,
    rebuilt_from_raw,
    save_report,
)

METHODS = {  # name: (timestep_sampler, loss_weighting)
    "uniform": ("uniform", "none"),
    "importance": ("importance", "none"),
    "speed": ("speed", "none"),
    "min-snr": ("uniform", "min-snr"),
    "adaptive": ("adaptive", "none"),
}
NUM_BINS = 17  # digits take 17 values (0..16): the decoder term L_0 of the bound uses these bins


def digits_splits() -> tuple[torch.Tensor, torch.Tensor]:
    """(training pool, test) images (n, 1, 8, 8) in [−1, 1]: the split of DigitsDataModule and the FD extractor."""
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 8 - 1
    pool, test = stratified_split(digits.target, 360, 1)
    return images[pool], images[test]


def tiny_unet(width: int) -> DDPMUNet:
    return DDPMUNet(image_size=8, in_channels=1, channels=width, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(), dropout=0.0, norm_groups=8)


class Run:
    """One training run: model, optimiser, sampler, weighting and (adaptive) the seed-004 updater."""

    def __init__(self, method: str, seed: int, args, schedule: DDPMSchedule, model_factory=None):
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.model, self.schedule = (model_factory or tiny_unet)(args.width), schedule
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        sampler_name, weighting_name = METHODS[method]
        self.sampler = make_timestep_sampler(sampler_name, schedule.num_timesteps,
                                             alphas_cumprod=schedule.alphas_cumprod, in_channels=1)
        self.weighting = make_loss_weighting(weighting_name)
        self.updater = None
        if method == "adaptive":
            self.updater = AdaptiveTimestepUpdater(self.sampler, ddpm_vb_terms(self.model, schedule, NUM_BINS),
                                                   update_every=args.update_every)
        self.logs: list[dict] = []

    def step(self, iteration: int, x0: torch.Tensor) -> torch.Tensor:
        """One training iteration; returns the unweighted per-sample ε losses (batch,), detached."""
        t, sampler_weights = self.sampler.sample(x0.shape[0], generator=self.generator, x0=x0)
        noise = torch.randn(x0.shape, generator=self.generator)
        x_t = self.schedule.add_noise(x0, noise, t)
        per_sample = F.mse_loss(self.model(t, x_t), noise, reduction="none").flatten(1).mean(1)
        loss = (per_sample * sampler_weights * self.weighting(self.schedule.snr(t)).float()).mean()
        if self.updater is not None:
            self.updater.before_optimizer_step(iteration, x0, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if isinstance(self.sampler, LossAwareSampler):
            self.sampler.update_with_local_losses(t, per_sample.detach())
        if self.updater is not None:
            logs = self.updater.after_optimizer_step(x0, t)
            if logs is not None:
                self.logs.append({"iteration": iteration, **logs})
        return per_sample.detach()

    @torch.no_grad()
    def generate(self, num: int, steps: int, seed: int) -> torch.Tensor:
        self.model.eval()
        noise = torch.randn(num, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        images = sample_ddim(self.model, noise, self.schedule, num_steps=steps).clamp(-1, 1)
        self.model.train()
        return images


def train_one(method: str, seed: int, args, pool: torch.Tensor, test_features, extract) -> dict:
    schedule = DDPMSchedule(args.num_timesteps, "quad")
    run = Run(method, seed, args, schedule)
    batches = torch.Generator().manual_seed(1000 + seed)  # the same data order for every method
    curve, train_seconds = [], 0.0
    for iteration in range(1, args.iterations + 1):
        x0 = pool[torch.randint(0, len(pool), (args.batch_size,), generator=batches)]
        start = time.perf_counter()
        run.step(iteration, x0)
        train_seconds += time.perf_counter() - start
        if iteration % args.eval_every == 0:
            images = run.generate(args.num_samples, args.ddim_steps, seed=10_000 + iteration)
            curve.append({"iteration": iteration, "fd": frechet_distance(extract(images), test_features)})
            print(f"  {method:10s} seed {seed} it {iteration:4d}  FD {curve[-1]['fd']:.3f}", flush=True)
    label = method if method != "adaptive" or args.update_every == 40 else f"adaptive-fs{args.update_every}"
    result = {"method": label, "seed": seed, "curve": curve, "train_seconds": train_seconds,
              "seconds_per_iteration": train_seconds / args.iterations}
    if run.updater is not None:
        result["sampler_logs"] = run.logs
        result["updater_seconds"] = run.updater.overhead_seconds
    return result


def measure_overhead(args, pool: torch.Tensor, model_factory=None) -> dict:
    """Per-iteration wall time of the adaptive sampler vs uniform, steps interleaved so both see the same load."""
    schedule = DDPMSchedule(args.num_timesteps, "quad")
    runs = {method: Run(method, 0, args, schedule, model_factory) for method in ("uniform", "adaptive")}
    seconds = {method: 0.0 for method in runs}
    batches = torch.Generator().manual_seed(1000)
    for iteration in range(1, args.overhead + 1):
        x0 = pool[torch.randint(0, len(pool), (args.batch_size,), generator=batches)]
        for method, run in runs.items():
            start = time.perf_counter()
            run.step(iteration, x0)
            seconds[method] += time.perf_counter() - start
    updater_seconds = runs["adaptive"].updater.overhead_seconds
    return {"iterations": args.overhead, "update_every": args.update_every,
            "seconds_per_iteration": {m: s / args.overhead for m, s in seconds.items()},
            "updater_seconds_per_iteration": updater_seconds / args.overhead,
            "overhead": seconds["adaptive"] / seconds["uniform"] - 1}


def iterations_to_reach(curve: list[dict], threshold: float) -> int | None:
    return next((point["iteration"] for point in curve if point["fd"] <= threshold), None)


def summarise(results: list[dict], floor: float, threshold: float | None = None) -> dict:
    methods = list(dict.fromkeys(r["method"] for r in results))
    mean_curve = {m: _mean_curve([r for r in results if r["method"] == m]) for m in methods}
    if threshold is None and "uniform" in mean_curve:
        threshold = mean_curve["uniform"][-1]["fd"]
    per_iteration = {m: sum(r["seconds_per_iteration"] for r in results if r["method"] == m)
                     / sum(r["method"] == m for r in results) for m in methods}
    summary = {"floor": floor, "threshold_fd": threshold, "methods": {}}
    for m in methods:
        summary["methods"][m] = {
            "final_fd_mean": mean_curve[m][-1]["fd"],
            "final_fd_per_seed": [r["curve"][-1]["fd"] for r in results if r["method"] == m],
            "best_fd_mean": min(p["fd"] for p in mean_curve[m]),
            "iterations_to_threshold": iterations_to_reach(mean_curve[m], threshold) if threshold else None,
            "seconds_per_iteration": per_iteration[m],
            "overhead_vs_uniform": per_iteration[m] / per_iteration.get("uniform", float("nan")) - 1,
        }
    return summary


def _mean_curve(runs: list[dict]) -> list[dict]:
    return [{"iteration": points[0]["iteration"], "fd": sum(p["fd"] for p in points) / len(points)}
            for points in zip(*(r["curve"] for r in runs))]


def summary_table(summary: dict, config: dict) -> Table:
    """One row per strategy: final and best mean FD, iterations to the fixed threshold, time per iteration."""
    threshold = f"{summary['threshold_fd']:.3f}" if summary["threshold_fd"] is not None else "n/a (no uniform run)"
    rows = []
    for method, row in summary["methods"].items():
        reached = row["iterations_to_threshold"] if row["iterations_to_threshold"] is not None else "not reached"
        rows.append([method, row["final_fd_mean"], ", ".join(f"{fd:.1f}" for fd in row["final_fd_per_seed"]),
                     row["best_fd_mean"], reached, row["seconds_per_iteration"],
                     f"{100 * row['overhead_vs_uniform']:+.0f} %"])
    return Table(["method", "final FD (mean)", "final FD per seed", "best mean FD", "iterations to threshold",
                  "s/iteration", "overhead vs uniform"], rows,
                 f"FD on digits features (floor {summary['floor']:.3f}); fixed FD threshold {threshold}; "
                 f"{config['iterations']} iterations, batch {config['batch_size']}, seeds {config['seeds']}")


def save_seed004_report(raw: dict) -> Path:
    """The report and its FD-curve plot from a raw file (one run or a --combine of several)."""
    plot(raw["runs"], raw["summary"]["floor"], str(RESULTS_DIR / "seed004_digits.png"))
    notes = ["The s/iteration column comes from runs that did not overlap in time on a shared, loaded machine "
             "and are not comparable with each other; seed004_digits_overhead times them interleaved."]
    return save_report("seed004_digits", "Seed 004 on digits: FD vs iterations for five timestep strategies",
                       [summary_table(raw["summary"], raw["config"])], notes=notes, plots=["seed004_digits.png"],
                       command=raw["command"], machine=raw_machine(raw, threads=raw["config"]["threads"]))


def save_overhead_report(raw: dict) -> Path:
    """The report of the interleaved timing of the adaptive sampler against uniform (``--overhead N``)."""
    per_iteration = raw["seconds_per_iteration"]
    table = Table(["uniform s/iteration", "adaptive s/iteration", "updater s/iteration", "overhead of adaptive"],
                  [[per_iteration["uniform"], per_iteration["adaptive"], raw["updater_seconds_per_iteration"],
                    f"{100 * raw['overhead']:+.0f} %"]],
                  f"{raw['iterations']} iterations of each, interleaved, f_S = {raw['update_every']}")
    notes = ["Uniform and adaptive steps alternate so both see the same load of a shared machine."]
    return save_report("seed004_digits_overhead", "Seed 004 on digits: wall time of the learned timestep sampler",
                       [table], notes=notes, command=raw["command"],
                       machine=raw_machine(raw, threads=raw["config"]["threads"]))


def plot(results: list[dict], floor: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for index, method in enumerate(dict.fromkeys(r["method"] for r in results)):
        runs = [r for r in results if r["method"] == method]
        iterations = [p["iteration"] for p in runs[0]["curve"]]
        values = torch.tensor([[p["fd"] for p in r["curve"]] for r in runs])
        colour = f"C{index}"
        axis.plot(iterations, values.mean(0), color=colour, marker="o", markersize=3, label=method)
        if len(runs) > 1:
            axis.fill_between(iterations, values.min(0).values, values.max(0).values, color=colour, alpha=0.15)
    axis.axhline(floor, color="grey", linestyle="--", label="real-data floor")
    axis.set(xlabel="training iteration", ylabel="Fréchet distance (digits features)", yscale="log",
             title="Timestep sampling on digits (DDPM, ε-prediction)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


MACHINE = f"{platform.machine()}, {os.cpu_count()} CPUs (shared)"


def public_config(args) -> dict:
    """The run's settings without where its files went (no machine paths in committed reports)."""
    return {k: v for k, v in vars(args).items() if k not in ("out", "combine", "from_raw")}


def write_partial(results: list[dict], floor: float, args) -> None:
    with open(os.path.join(args.out, "seed004_digits.partial.json"), "w") as handle:
        json.dump({"config": public_config(args), "summary": {"floor": floor}, "runs": results}, handle)


def _save_either_report(raw: dict) -> Path:
    """The overhead report for a raw file of ``--overhead``, the seed004 report otherwise."""
    return save_overhead_report(raw) if "overhead" in raw and "runs" not in raw else save_seed004_report(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=16, help="DDPMUNet base channels")
    parser.add_argument("--num-timesteps", type=int, default=1000)
    parser.add_argument("--update-every", type=int, default=40, help="f_S of the adaptive sampler")
    parser.add_argument("--num-samples", type=int, default=360, help="generated images per FD")
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RAW_DIR), help="directory of the raw JSON (the report goes to "
                        "benchmarks/results/)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the fixed FD each method must reach (default: uniform's final mean FD)")
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="train nothing: merge the runs of these reports (e.g. one process per seed)")
    parser.add_argument("--overhead", type=int, default=0, metavar="N",
                        help="train nothing else: time N interleaved iterations of uniform and adaptive")
    add_from_raw(parser, "training")
    args = parser.parse_args()
    if rebuilt_from_raw(args, _save_either_report):
        return
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    if args.overhead:
        raw = {"command": command_line(), "config": public_config(args), "machine": MACHINE,
               **measure_overhead(args, digits_splits()[0])}
        with open(os.path.join(args.out, "seed004_digits_overhead.json"), "w") as handle:
            json.dump(raw, handle, indent=1)
        print(save_overhead_report(raw))
        return

    if args.combine:
        reports = [json.load(open(path)) for path in args.combine]
        results, floor = [run for report in reports for run in report["runs"]], reports[0]["summary"]["floor"]
        run_configs = [{k: v for k, v in report["config"].items() if k not in ("out", "combine")} for report in reports]
        for key in ("iterations", "batch_size", "eval_every"):
            setattr(args, key, reports[0]["config"][key])
        args.seeds = sorted({run["seed"] for run in results})
    else:
        pool, test = digits_splits()
        extract = DigitsFeatureExtractor()
        test_features = extract(test)
        floor = frechet_distance(extract(pool), test_features)
        print(f"real-data floor (pool vs test features): {floor:.3f}", flush=True)
        results = []
        for seed in args.seeds:
            for method in args.methods:
                results.append(train_one(method, seed, args, pool, test_features, extract))
                write_partial(results, floor, args)  # a killed run still leaves its finished runs
    summary = summarise(results, floor, args.threshold)
    config = public_config(args)
    raw = {"command": command_line(), "config": config, "run_configs": run_configs if args.combine else [config],
           "machine": MACHINE, "summary": summary, "runs": results}
    with open(os.path.join(args.out, "seed004_digits.json"), "w") as handle:
        json.dump(raw, handle, indent=1)
    print(save_seed004_report(raw))


if __name__ == "__main__":
    main()
