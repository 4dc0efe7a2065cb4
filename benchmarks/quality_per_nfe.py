"""Sample quality against network evaluations: FD / floor at N = 1000 for every image sampler on the trained digits
DDPM, EDM and EDM2 models, beside diffusers' DDIM and DPM-Solver++ (ODE and SDE) schedulers on a diffusers model.

    PYTHONPATH=. python3 benchmarks/quality_per_nfe.py --runs-dir RUNS [--threads 2] [--anchor-minutes 8]
    PYTHONPATH=. python3 benchmarks/quality_per_nfe.py --race-dir RACE --race-seed 0

The pynodeta models are the shipped configs trained as a user trains them (``pynodeta fit --config NAME``, into
``RUNS/NAME/version_0``; a run already there is reused), or the runs of a digits race
(``diffusion_vs_diffusers.py race --out RACE``: ``RACE/runs/NAME_seedS/version_0``), sampled with the weights
their fit evaluated with. The anchor is diffusers' ``UNet2DModel`` (two levels of 32 and 64 channels, two
layers per level, attention at 4×4) trained for ``--anchor-minutes`` with diffusers' ``DDPMScheduler``
(T = 1000, linear β) under ``--anchor-recipe`` (default: the best of the ``diffusers_sweep`` report, AdamW
lr 2e-3, batch 64, EMA warm-up, cosine decay over the budget), then sampled with ``DDIMScheduler`` (η = 0)
and ``DPMSolverMultistepScheduler`` (DPM-Solver++(2M), deterministic and ``sde-dpmsolver++``), each as its
documentation sets it up.

Every point draws 1000 images from seeded noise, scores them in the digits feature network (pynodeta.metrics)
against the test images, and divides by the floor: the FD of 1000 real training images against the same test
images. NFE is the samplers' own count of network evaluations per image. Saves
benchmarks/results/quality_per_nfe.json and .png and the raw measurements under results/raw/; ``--from-raw FILE``
rebuilds the report from them.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from pynodeta.diffusion import SAMPLERS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusion_vs_diffusers import race_run_dir  # noqa: E402
from digits_anchor import NUM, UNTUNED_RECIPE, Reference, candidate_recipes, fit_record, train_anchor  # noqa: E402

from reporting import (  # noqa: E402
    RESULTS_DIR,
    Table,
    add_from_raw,
    load_raw,
    raw_machine,
    rebuilt_from_raw,
    save_raw,
    save_report,
)

NAME = "quality_per_nfe"
CONFIGS = ("digits_ddpm", "digits_edm", "digits_edm2")
STEPS = (3, 5, 10, 18, 35)  # noise levels per sampler (--steps); a point above --max-nfe ends the sampler's sweep
MAX_NFE = 80
SEED = 7
RECIPES = candidate_recipes()
SHIPPED_RUNS = "the shipped digits configs trained by `pynodeta fit` as shipped"  # older raw files: these
TUNED_RECIPE = "lr2e-3_b64_p0.75"  # the diffusers_sweep report's best for 8 minutes on 2 threads


# --- pynodeta's configs, trained as users train them ---------------------------------------------------------
def trained_checkpoint(name: str, runs: Path) -> Path:
    checkpoint = runs / name / "version_0" / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        command = [sys.executable, "-m", "pynodeta.cli", "fit", "--config", name,
                   "--trainer.logger.init_args.save_dir", str(runs)]
        print("training:", " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, cwd=runs)
    return checkpoint


def race_checkpoint(name: str, race: Path, seed: int) -> Path:
    """The last checkpoint of ``name``'s seed-``seed`` run in a digits race's folder."""
    checkpoint = race_run_dir(race, name, seed) / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise SystemExit(f"--race-dir: no seed-{seed} run of {name} at {checkpoint}; run the race for that seed "
                         f"or pass --runs-dir to train the configs here")
    return checkpoint


def pynodeta_curves(name: str, checkpoint: Path, reference: Reference, steps_list=STEPS,
                    max_nfe: float = MAX_NFE) -> list[dict]:
    from pynodeta.train.diffusion_sampling import generate
    from pynodeta.train.sample_cli import load_diffusion_run

    run, weights = load_diffusion_run(str(checkpoint), None)
    module = run.module.eval()
    points = []
    for sampler in sorted(SAMPLERS):
        if sampler in ("ddpm", "dpm_adaptive"):  # all T steps / adaptive: no step count to sweep
            continue
        for steps in steps_list:
            try:
                started = time.perf_counter()
                samples = generate(module, NUM, sampler, steps, generator=torch.Generator().manual_seed(SEED))
            except ValueError as refused:  # a sampler this objective refuses (e.g. DDIM on an EDM model)
                print(f"{name} {sampler}: {refused}", flush=True)
                break
            if samples.nfe > max_nfe:
                break
            points.append({"model": name, "sampler": sampler, "steps": steps, "nfe": samples.nfe,
                           "fd_ratio": reference.fd_ratio(samples.images), "weights": weights,
                           "seconds": time.perf_counter() - started})
            print(f"{name} {sampler} steps {steps}: NFE {samples.nfe:.0f}, FD/floor {points[-1]['fd_ratio']:.2f}",
                  flush=True)
    return points


# --- the diffusers anchor (untuned; diffusion_vs_diffusers.py sweeps diffusers' own recipe for the budget) ----------
@torch.no_grad()
def anchor_curves(network, reference: Reference, weights: str) -> list[dict]:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    schedulers = {
        "diffusers DDIM": lambda: DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear"),
        "diffusers DPM-Solver++(2M)": lambda: DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2),
        # the stochastic variant, as pynodeta's SDE samplers are: compare like with like
        "diffusers DPM-Solver++(2M) SDE": lambda: DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_schedule="linear", algorithm_type="sde-dpmsolver++", solver_order=2),
    }
    points = []
    for name, build in schedulers.items():
        for steps in (5, 10, 20, 35, 50, 100):
            scheduler = build()
            scheduler.set_timesteps(steps)
            x = torch.randn(NUM, 1, 8, 8, generator=torch.Generator().manual_seed(SEED))
            noise = torch.Generator().manual_seed(SEED + 1)  # the SDE's own noise; the ODE schedulers draw none
            started = time.perf_counter()
            for t in scheduler.timesteps:
                x = scheduler.step(network(x, t).sample, t, x, generator=noise).prev_sample
            points.append({"model": "diffusers UNet2DModel", "sampler": name, "steps": steps, "nfe": float(steps),
                           "fd_ratio": reference.fd_ratio(x), "weights": weights,
                           "seconds": time.perf_counter() - started})
            print(f"anchor {name} steps {steps}: FD/floor {points[-1]['fd_ratio']:.2f}", flush=True)
    return points


# --- the report ---------------------------------------------------------------------------------------------------
def matching_nfe(points: list[dict], model: str, target: float) -> tuple[float, str] | None:
    """The fewest NFE at which any sampler of ``model`` reaches FD / floor ≤ ``target``, and that sampler."""
    reached = [(p["nfe"], p["sampler"]) for p in points if p["model"] == model and p["fd_ratio"] <= target]
    return min(reached) if reached else None


def save_quality_report(raw: dict, directory: Path | None = None) -> Path:
    directory = RESULTS_DIR if directory is None else directory  # read at call time: tests redirect it
    points = raw["points"]
    rows = [[p["model"], p["sampler"], p["steps"], round(p["nfe"], 1), round(p["fd_ratio"], 2)] for p in points]
    table = Table(["model", "sampler", "steps", "NFE", "FD / floor@1000"], rows,
                  caption=f"{NUM} images per point from seeded noise; floor@1000 = {raw['floor']:.3f} "
                          f"(1000 training images against the test images, digits features)")
    anchor = next((p for p in points if p["sampler"] == "diffusers DDIM" and p["steps"] == 50), None)
    summary_rows = []
    for model in CONFIGS:
        best = min((p for p in points if p["model"] == model), key=lambda p: p["fd_ratio"], default=None)
        match = matching_nfe(points, model, anchor["fd_ratio"]) if anchor else None
        summary_rows.append([model, f"{best['fd_ratio']:.2f} ({best['sampler']}, NFE {best['nfe']:.0f})" if best
                             else "-", f"{match[0]:.0f} ({match[1]})" if match else "not reached"])
    for row in summary_rows:
        fit = raw.get("fits", {}).get(row[0])
        row[1:1] = [fit["steps"], round(fit["fd_ratio"], 2)] if fit else ["-", "-"]
    recipe = raw.get("anchor_recipe", f"quality_per_nfe ({UNTUNED_RECIPE.describe()})")  # older raw files: untuned
    summary = Table(["pynodeta config", "training steps", "fit's own FD / floor (its N)",
                     "best FD / floor@1000 (sampler, NFE)", "fewest NFE matching the anchor's DDIM-50"], summary_rows,
                    caption=(f"anchor: diffusers UNet2DModel, recipe {recipe}, {raw['anchor_steps']} steps in "
                             f"{raw['anchor_minutes']:g} min; its DDIM-50 reaches FD / floor@1000 = "
                             f"{anchor['fd_ratio']:.2f}") if anchor else "no anchor run")
    Path(directory).mkdir(parents=True, exist_ok=True)
    plot = _plot(points, Path(directory) / f"{NAME}.png")
    runs = raw.get("config_runs", SHIPPED_RUNS)
    notes = [f"pynodeta's models: {runs}, sampled with the weights their fit evaluated with.",
             raw.get("machine_note", "")]
    return save_report(NAME, "Sample quality against network evaluations on the digits", [summary, table],
                       notes=[n for n in notes if n], plots=[plot.name] if plot else [], command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]), directory=directory)


def _plot(points: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = [*CONFIGS, "diffusers UNet2DModel"]
    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), sharey=True)
    for axis, model in zip(axes, models):
        for sampler in sorted({p["sampler"] for p in points if p["model"] == model}):
            curve = sorted((p["nfe"], p["fd_ratio"]) for p in points if p["model"] == model and p["sampler"] == sampler)
            axis.plot(*zip(*curve), marker="o", markersize=3, label=sampler)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping minor labels
        axis.set_title(model)
        axis.set_xlabel("NFE")
        if axis.lines:
            axis.legend(fontsize="x-small")
    axes[0].set_ylabel("FD / floor@1000")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=None, help="where the configs' runs are (or are trained)")
    parser.add_argument("--race-dir", type=Path, default=None,
                        help="take the configs' runs from this digits race's --out folder instead")
    parser.add_argument("--race-seed", type=int, default=0, help="which of the race's seeds (with --race-dir)")
    parser.add_argument("--anchor-recipe", choices=sorted(RECIPES), default=TUNED_RECIPE, metavar="NAME",
                        help=f"the anchor's training recipe, as named in diffusion_vs_diffusers.py (default "
                             f"{TUNED_RECIPE}; 'quality_per_nfe' is the untuned one of earlier runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--anchor-minutes", type=float, default=8.0)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="noise levels of each sampler")
    parser.add_argument("--max-nfe", type=float, default=MAX_NFE, help="a sampler's sweep stops above this NFE")
    parser.add_argument("--machine-note", default="", help="how the machine was shared during the run")
    add_from_raw(parser, "training and sampling")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_quality_report):
        return
    if (args.runs_dir is None) == (args.race_dir is None):
        parser.error("pass one of --runs-dir (the folder of the configs' runs) or --race-dir (a digits race's runs)")
    torch.set_num_threads(args.threads)
    if args.race_dir is not None:
        checkpoints = {name: race_checkpoint(name, args.race_dir.resolve(), args.race_seed) for name in CONFIGS}
        config_runs = f"the digits race's seed-{args.race_seed} runs of the shipped configs"
    else:
        args.runs_dir.mkdir(parents=True, exist_ok=True)
        checkpoints = {name: trained_checkpoint(name, args.runs_dir.resolve()) for name in CONFIGS}
        config_runs = SHIPPED_RUNS
    reference = Reference()
    points = []
    for name, checkpoint in checkpoints.items():
        points += pynodeta_curves(name, checkpoint, reference, args.steps, args.max_nfe)
    recipe = RECIPES[args.anchor_recipe]
    network, anchor_steps = train_anchor(recipe, args.anchor_minutes, reference.data)
    points += anchor_curves(network, reference, weights=recipe.averaging())
    fits = {name: fit_record(checkpoint.parents[2]) for name, checkpoint in checkpoints.items()}
    raw = {"points": points, "floor": reference.floor, "threads": args.threads, "anchor_minutes": args.anchor_minutes,
           "anchor_recipe": f"{args.anchor_recipe} ({recipe.describe()})", "config_runs": config_runs, "fits": fits,
           "anchor_steps": anchor_steps, "machine_note": args.machine_note}
    print(save_quality_report(load_raw(save_raw(NAME, raw))))
    if not all(math.isfinite(p["fd_ratio"]) for p in points):
        print("warning: some points have a non-finite FD", file=sys.stderr)


if __name__ == "__main__":
    main()
