"""Seed 004 at convergence on the 8×8 digits: iterations to a fixed FD for five timestep strategies, 5 seeds.

The strategies, model (DDPM, ε-prediction, T = 1000, quad β) and loop are those of ``seed004_digits.py``; here
the U-Net has the seed-001 fixes (one GroupNorm group, positional timestep map, zero operand biases), FD is
taken on an EMA of the weights, and each (strategy, seed) trains until its FD reaches the smallest of
``--factors`` × the real-data floor at the same N (the report counts the iterations to each), or
``--max-iterations``. Every evaluation also logs the timestep distribution the sampler draws over the
training pool (adaptive, importance, SpeeD); every sampler update of the adaptive runs logs its reward
against the noise of the bound it is the drop of.

    nice -n 5 python benchmarks/seed004_convergence.py --out RUNS --jobs 0 2     # process 1 of 2
    nice -n 5 python benchmarks/seed004_convergence.py --out RUNS --jobs 1 2     # process 2 of 2
    nice -n 5 python benchmarks/seed004_convergence.py --out RUNS --overhead 300  # adaptive vs uniform, interleaved
    python benchmarks/seed004_convergence.py --combine RUNS/*.json               # raw + report

One raw JSON per (strategy, seed) goes to ``--out`` (a finished run is skipped when rerun, so a cut
process resumes); ``--combine`` merges them into benchmarks/results/raw/seed004_convergence.json and
writes the report (see ``convergence_report.py``); ``--from-raw`` rebuilds the report from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convergence_report import save_convergence_report  # noqa: E402
from seed004_digits import METHODS, Run, digits_splits, measure_overhead  # noqa: E402

from pynodeta._atomic import atomic_write_text  # noqa: E402
from pynodeta.diffusion import DDPMSchedule, sample_ddim  # noqa: E402
from pynodeta.ema.classic import EMA  # noqa: E402
from pynodeta.metrics import DigitsFeatureExtractor, frechet_distance  # noqa: E402
from pynodeta.models.diffusion.ddpm_unet import DDPMUNet  # noqa: E402

from reporting import RAW_DIR, add_from_raw, command_line, machine_facts, rebuilt_from_raw  # noqa: E402

STRATEGIES = [*METHODS, "adaptive-std"]  # adaptive-std: the learned sampler with a standardised reward
HISTOGRAM_BINS = 20


def fixed_unet(width: int) -> DDPMUNet:
    """The tiny U-Net of seed004_digits with the three seed-001 fixes (as the digits_ddpm config)."""
    return DDPMUNet(image_size=8, in_channels=1, channels=width, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(), dropout=0.0, norm_groups=1, positional_embedding=True,
                    bias_init="zero_operand")


class RewardProbe:
    """Stands in for ``sampler.reinforce``: logs the reward against the noise of the bound, then (optionally
    standardised) passes it on.

    The reward R_i = Σ_{τ∈S} [L_τ(before) − L_τ(after)] uses one noise draw for both; its scale is set
    against (a) the measurement noise of Σ_{τ∈S} L_τ itself (two fresh noise draws on the same images),
    and (b) its correlation with the action t_i: REINFORCE learns only from the part of R that depends on t.
    """

    def __init__(self, run: Run, standardize: bool, generator: torch.Generator):
        self.run, self.standardize, self.generator = run, standardize, generator
        self.reinforce = run.sampler.reinforce
        run.sampler.reinforce = self
        self.records: list[dict] = []
        self.loss_stats: dict = {}

    def bound_at_selected(self, x0: torch.Tensor) -> torch.Tensor:
        updater = self.run.updater
        total = torch.zeros(x0.shape[0], dtype=torch.float64)
        for tau in updater.selected.tolist():
            noise = torch.randn(x0.shape, generator=self.generator)
            total += updater.vb_terms(x0, torch.full((x0.shape[0],), tau), noise).double()
        return total

    def __call__(self, x0, t, reward):
        reward = torch.as_tensor(reward, dtype=torch.float64)
        first, second = self.bound_at_selected(x0), self.bound_at_selected(x0)
        noise_sd = float((first - second).std() / 2**0.5)  # per-sample noise of Σ_S L_τ from the diffusion noise
        t_float = t.double()
        correlation = float(torch.corrcoef(torch.stack([reward, t_float]))[0, 1]) if t_float.std() > 0 else 0.0
        self.records.append({"reward_mean": float(reward.mean()), "reward_abs_mean": float(reward.abs().mean()),
                             "reward_sd": float(reward.std()), "positive_fraction": float((reward > 0).float().mean()),
                             "bound_mean": float(first.mean()), "bound_noise_sd": noise_sd,
                             "reward_t_correlation": correlation, **self.loss_stats})
        if self.standardize:
            reward = (reward - reward.mean()) / reward.std().clamp(min=1e-12)
        return self.reinforce(x0, t, reward)


def timestep_histogram(run: Run, pool: torch.Tensor, generator: torch.Generator) -> list[float]:
    """The sampler's distribution of t over the training pool in 20 equal bins (4 draws per image)."""
    draws = torch.cat([run.sampler.sample(len(pool), generator=generator, x0=pool)[0] for _ in range(4)])
    counts = torch.histc(draws.double(), HISTOGRAM_BINS, 0, run.schedule.num_timesteps)
    return (counts / counts.sum()).tolist()


@torch.no_grad()
def generate(model, schedule, args, seed: int) -> torch.Tensor:
    noise = torch.randn(args.num_samples, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return sample_ddim(model, noise, schedule, num_steps=args.ddim_steps).clamp(-1, 1)


def real_data_floor(pool: torch.Tensor, test_features, extract, n: int, repeats: int = 5) -> float:
    """FD of ``n`` training images against the test features, averaged over ``repeats`` subsets: the floor at N."""
    generator = torch.Generator().manual_seed(0)
    values = [frechet_distance(extract(pool[torch.randperm(len(pool), generator=generator)[:n]]), test_features)
              for _ in range(repeats)]
    return sum(values) / len(values)


def train_to_threshold(strategy: str, seed: int, args, pool, test_features, extract, threshold: float) -> dict:
    schedule = DDPMSchedule(args.num_timesteps, "quad")
    method = "adaptive" if strategy == "adaptive-std" else strategy
    run = Run(method, seed, args, schedule, fixed_unet)
    ema = EMA(run.model, decay=args.ema_decay)
    probe = RewardProbe(run, strategy == "adaptive-std", torch.Generator().manual_seed(7 + seed)) \
        if run.updater is not None else None
    histograms = torch.Generator().manual_seed(99 + seed)  # apart from training's RNG streams
    batches = torch.Generator().manual_seed(1000 + seed)  # the same data order for every strategy
    curve, seconds, cpu_seconds, previous_loss, loss_jumps = [], 0.0, 0.0, None, []
    reached = None
    for iteration in range(1, args.max_iterations + 1):
        x0 = pool[torch.randint(0, len(pool), (args.batch_size,), generator=batches)]
        start, cpu_start = time.perf_counter(), time.thread_time()
        per_sample = run.step(iteration, x0)
        ema.update(iteration)
        seconds += time.perf_counter() - start
        cpu_seconds += time.thread_time() - cpu_start
        loss = float(per_sample.mean())
        if previous_loss is not None:
            loss_jumps.append(loss - previous_loss)
        previous_loss = loss
        if probe is not None:  # read by the probe at the next update: the ε-loss noise around it
            probe.loss_stats = {"loss": loss, "per_sample_loss_sd": float(per_sample.std())}
        if iteration % args.eval_every == 0:
            images = generate(ema.averaged(), schedule, args, seed=10_000 + iteration)
            point = {"iteration": iteration, "fd": frechet_distance(extract(images), test_features),
                     "seconds": seconds, "cpu_seconds": cpu_seconds,
                     "loss_change_sd": float(torch.tensor(loss_jumps).std()) if len(loss_jumps) > 1 else None}
            loss_jumps = []
            if strategy in ("adaptive", "adaptive-std", "importance", "speed"):
                point["t_histogram"] = timestep_histogram(run, pool, histograms)
            curve.append(point)
            print(f"  {strategy:12s} seed {seed} it {iteration:5d}  FD {point['fd']:.2f}  ({seconds:.0f} s)",
                  flush=True)
            if point["fd"] <= threshold:
                reached = iteration
                break
    result = {"strategy": strategy, "seed": seed, "threshold": threshold, "reached": reached,
              "iterations": iteration, "seconds": seconds, "cpu_seconds": cpu_seconds, "curve": curve}
    if probe is not None:
        result["reward_records"] = probe.records
        result["updater_seconds"] = run.updater.overhead_seconds
    return result


def public_config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("out", "combine", "from_raw", "jobs")}


def jobs(args) -> list[tuple[str, int]]:
    """The standardised-reward runs, then seed-major (a cut leaves whole seeds); every ``--jobs k n``-th job
    for process k of n."""
    everything = [("adaptive-std", seed) for seed in args.std_seeds]  # first: the reward check needs one
    everything += [(strategy, seed) for seed in args.seeds for strategy in args.strategies]
    index, count = args.jobs
    return everything[index::count]


def combine(paths: list[str]) -> dict:
    """One raw record from the per-run files (and the ``--overhead`` file) of one setting."""
    records = [json.loads(Path(path).read_text()) for path in sorted(paths)]
    runs = [r for r in records if "strategy" in r]
    overhead = [r for r in records if "overhead" in r and "strategy" not in r]
    # which jobs a process ran does not change a run; everything else must agree
    jobs_only = ("overhead", "seeds", "std_seeds", "strategies")
    configs = {json.dumps({k: v for k, v in r["config"].items() if k not in jobs_only}, sort_keys=True) for r in runs}
    if len(configs) != 1:
        raise ValueError(f"the runs to combine were made with {len(configs)} different settings; pass one set")
    first = runs[0]
    # the commands as typed, the per-run folder written RUNS (no machine paths in committed files)
    commands = sorted({r["command"] for r in runs + overhead})
    command = "; ".join([*commands, "python3 benchmarks/seed004_convergence.py --combine RUNS/*.json"])
    raw = {"command": command, "config": first["config"], "machine": first["machine"], "floor": first["floor"],
           "runs": [{k: v for k, v in r.items() if k not in ("config", "machine", "floor", "command")}
                    for r in runs]}
    if overhead:
        raw["overhead"] = {k: v for k, v in overhead[-1].items() if k not in ("config", "machine", "command")}
    return raw


def rounded(value, digits: int = 6):
    """``value`` with every float kept to ``digits`` significant digits (the committed raw file stays small)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--std-seeds", nargs="*", type=int, default=[0],
                        help="seeds of the extra adaptive runs with a standardised reward")
    parser.add_argument("--jobs", nargs=2, type=int, default=[0, 1], metavar=("K", "N"),
                        help="run every N-th job starting at K (one process of N)")
    parser.add_argument("--max-iterations", type=int, default=10_000)
    parser.add_argument("--factors", nargs="+", type=float, default=[3.0, 2.0],
                        help="FD thresholds as multiples of the floor; a run stops at the smallest")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=16, help="DDPMUNet base channels")
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--num-timesteps", type=int, default=1000)
    parser.add_argument("--update-every", type=int, default=40, help="f_S of the adaptive sampler")
    parser.add_argument("--num-samples", type=int, default=360, help="generated images per FD (= test images)")
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/seed004_convergence", help="directory of the per-run JSON")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="train nothing: merge these per-run files")
    parser.add_argument("--overhead", type=int, default=0, metavar="N",
                        help="train nothing else: time N interleaved iterations of uniform and adaptive")
    add_from_raw(parser, "training")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_convergence_report):
        return
    if args.combine:
        raw = rounded(combine(args.combine))  # the report is made from exactly what is committed
        path = RAW_DIR / "seed004_convergence.json"
        atomic_write_text(path, json.dumps(raw) + "\n")
        print(save_convergence_report(raw))
        return
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    pool, test = digits_splits()
    if args.overhead:
        record = {"command": command_line(), "config": public_config(args), "machine": machine_facts(),
                  **measure_overhead(args, pool, fixed_unet)}
        atomic_write_text(Path(args.out) / "overhead.json", json.dumps(record) + "\n")
        print(record["seconds_per_iteration"], record["overhead"])
        return
    extract = DigitsFeatureExtractor()
    test_features = extract(test)
    floor = real_data_floor(pool, test_features, extract, args.num_samples)
    threshold = min(args.factors) * floor
    print(f"real-data floor at N = {args.num_samples}: {floor:.3f}; stop at FD {threshold:.3f}", flush=True)
    for strategy, seed in jobs(args):
        path = Path(args.out) / f"{strategy}_seed{seed}.json"
        if path.exists():
            continue
        result = train_to_threshold(strategy, seed, args, pool, test_features, extract, threshold)
        record = {"command": command_line(), "config": public_config(args), "machine": machine_facts(),
                  "floor": floor, **result}
        atomic_write_text(path, json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
