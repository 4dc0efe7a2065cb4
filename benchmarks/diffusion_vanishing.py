"""Seed-001 reproduction on the 8×8 digits: a DDPM U-Net whose timestep embedding vanishes, and the fixes.

Variants of one small DDPMUNet (ε-prediction, T = 1000 linear), all trained the same number of steps:
  vanishing-gn   GroupNorm with one group per channel (G = C) right after the added embedding
  vanishing-bn   BatchNorm right after it
  gn-positional  G = C plus fix 1, a positional (H×W) timestep map after the injection
  all-fixes      fix 1 + fix 2 (zero operand-branch biases) + fix 3 (one GroupNorm group)
Per variant and seed: FD / real-data floor of DDIM samples, NLL in bits/dim (probability-flow ODE,
Hutchinson), and the diagnose audit of the trained network (vanishing flag, lowest survival ratio).

    python benchmarks/diffusion_vanishing.py --steps 200 --seeds 0 1
Saves the report benchmarks/results/diffusion_vanishing.json (rendered into docs/results.md) with its
.png and the sample grids; the raw runs go to benchmarks/results/raw/diffusion_vanishing.json (``--append``
adds to them) and ``--from-raw FILE`` rebuilds the report from such a file without training.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from pynodeta.data import DigitsDataModule
from pynodeta.diagnose import time_awareness
from pynodeta.models import DDPMUNet
from pynodeta.train import DDPMObjective, EMAAveraging, EvalSettings
from pynodeta.train.diffusion import DiffusionModule
from pynodeta.train.diffusion_evaluation import evaluate_samples, nll_bits_per_dim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import (  # noqa: E402
    RAW_DIR,
    RESULTS_DIR,
    Table,
    add_from_raw,
    load_raw,
    raw_machine,
    rebuilt_from_raw,
    save_raw,
    save_report,
)

RESULTS = RESULTS_DIR
VARIANTS = {
    "vanishing-gn": dict(post_time_groups="channels"),
    "vanishing-bn": dict(post_time_norm="batch"),
    "gn-positional": dict(post_time_groups="channels", positional_embedding=True),
    "all-fixes": dict(norm_groups=1, positional_embedding=True, bias_init="zero_operand"),
}
TIMES = [0.0, 250.0, 500.0, 750.0, 999.0]


def train(variant: str, seed: int, steps: int, channels: int, data: DigitsDataModule) -> DiffusionModule:
    torch.manual_seed(seed)
    net = DDPMUNet(image_size=8, channels=channels, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                   dropout=0.0, **{"norm_groups": 4, **VARIANTS[variant]})
    module = DiffusionModule(net, DDPMObjective(num_bins=17), averaging=EMAAveraging(0.99),
                             evaluation=EvalSettings(sampler="ddim", steps=25, num_bins=17))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    module.train()
    done = 0
    while done < steps:
        for x0, _ in data.train_dataloader():
            loss = module.objective.loss(module.model, x0).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            module.ema.step(net)
            done += 1
            if done == steps:
                break
    return module


def audit(module: DiffusionModule, data: DigitsDataModule) -> dict:
    x = torch.stack([data.test_set[i][0] for i in range(8)])
    report = time_awareness(module.model, x, TIMES)
    survivals = [f.survival for f in report.findings if f.role == "normalisation" and f.survival is not None]
    return {"vanishing": report.vanishing, "min_survival": min(survivals) if survivals else math.nan,
            "output_sensitivity": report.output_sensitivity}


def run(variant: str, seed: int, args, data: DigitsDataModule) -> dict:
    started = time.perf_counter()
    module = train(variant, seed, args.steps, args.channels, data)
    train_seconds = time.perf_counter() - started
    with module.ema_weights():
        samples = evaluate_samples(module, RESULTS / f"diffusion_vanishing_{variant}_seed{seed}.png", data,
                                   num=args.num_samples)
        nll = nll_bits_per_dim(module, data, args.nll_images)
        diagnosis = audit(module, data)
    samples["grid"] = Path(samples["grid"]).name  # the file sits beside the report; no machine path in the record
    return {"variant": variant, "seed": seed, "train_seconds": train_seconds, **samples, **nll, **diagnosis}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, label in zip(axes, ("fd_ratio", "bpd", "min_survival"),
                              ("FD / real-data floor", "NLL (bits/dim)", "lowest survival ratio (diagnose)")):
        for i, name in enumerate(names):
            values = [r[key] for r in rows if r["variant"] == name]
            ax.scatter([i] * len(values), values, color="k", s=14, zorder=3)
            ax.bar(i, sum(values) / len(values), color="tab:red" if name.startswith("vanishing") else "tab:green")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _mean_sd(values: list[float]) -> str:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


def _variant_row(variant: str, runs: list[dict]) -> list:
    flagged = sum(bool(r["vanishing"]) for r in runs)
    return [variant, len(runs), _mean_sd([r["fd_ratio"] for r in runs]), _mean_sd([r["bpd"] for r in runs]),
            f"{flagged} of {len(runs)}"]


def save_vanishing_report(raw: dict) -> Path:
    """The report (one row per variant and seed) from the raw runs :func:`main` collects."""
    rows = [[r["variant"], r["seed"], r["fd_ratio"], f"{r['bpd']:.2f} ± {r['bpd_stderr']:.2f}",
             "yes" if r["vanishing"] else "no", r["min_survival"], round(r["train_seconds"])] for r in raw["runs"]]
    table = Table(["variant", "seed", "FD / floor", "NLL (bits/dim, ± s.e.)", "diagnose: vanishing",
                   "lowest survival", "train s"], rows,
                  f"DDPMUNet, {raw['channels']} channels, {raw['steps']} steps of batch 64; FD of DDIM samples "
                  "over the real-data floor")
    variants = list(dict.fromkeys(r["variant"] for r in raw["runs"]))
    summary = Table(["variant", "seeds", "FD / floor (mean ± sd)", "NLL bits/dim (mean ± sd)", "vanishing in"],
                    [_variant_row(v, [r for r in raw["runs"] if r["variant"] == v]) for v in variants],
                    "per variant, over its seeds (each run below)")
    grids = [Path(r["grid"]).name for r in raw["runs"] if r.get("grid") and r["seed"] == raw["runs"][0]["seed"]]
    notes = [raw.get("machine_note", "Train times: one thread.")]
    return save_report("diffusion_vanishing", "Seed 001 on digits: a vanishing timestep embedding and its fixes",
                       [summary, table], notes=notes, plots=["diffusion_vanishing.png", *grids],
                       command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="training steps (batch 64) per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=360)
    parser.add_argument("--nll-images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--append", action="store_true", help="add these runs to the existing raw JSON's")
    add_from_raw(parser, "training")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_vanishing_report):
        return
    torch.set_num_threads(args.threads)
    data = DigitsDataModule(batch_size=64, normalization="diffusion")
    data.setup()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.append and (RAW_DIR / "diffusion_vanishing.json").is_file():
        rows = load_raw(RAW_DIR / "diffusion_vanishing.json")["runs"]
    for seed in args.seeds:
        for variant in args.variants:
            rows.append(run(variant, seed, args, data))
            r = rows[-1]
            print(f"{variant:14s} seed {seed}: FD/floor {r['fd_ratio']:.2f}, NLL {r['bpd']:.3f} bits/dim, "
                  f"vanishing {r['vanishing']}, lowest survival {r['min_survival']:.3g}, "
                  f"train {r['train_seconds']:.0f} s", flush=True)
            raw = save_raw("diffusion_vanishing", {"steps": args.steps, "channels": args.channels,
                                                   "threads": args.threads, "runs": rows})
            plot(rows, RESULTS / "diffusion_vanishing.png")  # after every run: partial results stay usable
            save_vanishing_report(load_raw(raw))


if __name__ == "__main__":
    main()
