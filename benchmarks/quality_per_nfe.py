"""Sample quality against network evaluations: FD / floor at N = 1000 for every image sampler on the trained digits
DDPM, EDM and EDM2 models, beside diffusers' DDIM and DPM-Solver++ (ODE and SDE) schedulers on a diffusers model.

    PYTHONPATH=. python3 benchmarks/quality_per_nfe.py --runs-dir RUNS [--threads 2] [--anchor-minutes 8]
    PYTHONPATH=. python3 benchmarks/quality_per_nfe.py --race-dir RACE --race-seed 0 1 2

The pynodeta models are the shipped configs trained as a user trains them (``pynodeta fit --config NAME``, into
``RUNS/NAME/version_0``; a run already there is reused), or the runs of a digits race (``diffusion_vs_diffusers.py
race --out RACE``: ``RACE/runs/NAME_seedS/version_0``), sampled with the weights their fit evaluated with; each
config's own sampler is drawn with the options the shipped config gives it now (e.g. ``clip_x0`` for a DDIM config),
every other sampler with none. The anchor is diffusers' ``UNet2DModel`` (two levels of 32 and 64 channels, two
layers per level, attention at 4×4) trained for ``--anchor-minutes`` with diffusers' ``DDPMScheduler`` (T = 1000,
linear β) under ``--anchor-recipe`` (default: the best of the ``diffusers_sweep`` report, AdamW lr 2e-3, batch 64,
EMA warm-up, cosine decay over the budget), then sampled with ``DDIMScheduler`` (η = 0) and
``DPMSolverMultistepScheduler`` (DPM-Solver++(2M), deterministic and ``sde-dpmsolver++``), each as its
documentation sets it up.

Every point draws 1000 images from seeded noise, scores them in the digits feature network (pynodeta.metrics)
against the test images, and divides by the floor: the FD of 1000 real training images against the same test
images. NFE is the samplers' own count of network evaluations per image. With several race seeds every seed
is swept in turn, the anchor trained once per seed with that seed, and the report gives each point's mean over
the seeds with a 95 % t-interval; a seed's sweep is kept in ``RACE/quality_per_nfe-seedS.json`` when it ends, so
a run that stops resumes at the next seed. Saves benchmarks/results/quality_per_nfe.json and .png and the raw
measurements under results/raw/; ``--from-raw FILE`` rebuilds the report from them.
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
from pynodeta.train.diffusion_sampling import describe_sampler_options

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusion_vs_diffusers import mean_interval, race_run_dir, shipped_evaluation  # noqa: E402
from digits_anchor import NUM, Reference, candidate_recipes, fit_record, train_anchor  # noqa: E402

from reporting import (  # noqa: E402
    RESULTS_DIR,
    Table,
    add_from_raw,
    kept_record,
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
PLOT_TOP = 10.0  # FD / floor above this (3–5 steps) is left to the table: the plot is for where samplers compete
NFE_CAPS = (10, 20, 35, MAX_NFE)  # the best sampler of each model within these budgets of network evaluations
SEED = 7
RECIPES = candidate_recipes()
SHIPPED_RUNS = "the shipped digits configs trained by `pynodeta fit` as shipped"
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
    shipped = shipped_evaluation(name)
    points = []
    for sampler in sorted(SAMPLERS):
        if sampler in ("ddpm", "dpm_adaptive"):  # all T steps / adaptive: no step count to sweep
            continue
        # given explicitly, so that a run fitted before its config had options is drawn as the config is now
        options = shipped["sampler_options"] if sampler == shipped["sampler"] else {}
        for steps in steps_list:
            try:
                started = time.perf_counter()
                samples = generate(module, NUM, sampler, steps, generator=torch.Generator().manual_seed(SEED),
                                   sampler_options=options)
            except ValueError as refused:  # a sampler this objective refuses (e.g. DDIM on an EDM model)
                print(f"{name} {sampler}: {refused}", flush=True)
                break
            if samples.nfe > max_nfe:
                break
            points.append({"model": name, "sampler": sampler, "sampler_options": options, "steps": steps,
                           "nfe": samples.nfe, "fd_ratio": reference.fd_ratio(samples.images), "weights": weights,
                           "seconds": time.perf_counter() - started})
            print(f"{name} {label(points[-1])} steps {steps}: NFE {samples.nfe:.0f}, "
                  f"FD/floor {points[-1]['fd_ratio']:.2f}", flush=True)
    return points


# --- the diffusers anchor (untuned; diffusion_vs_diffusers.py sweeps diffusers' own recipe for the budget) ----------
DIFFUSERS_DDIM, DIFFUSERS_DPM, DIFFUSERS_DPM_SDE = ("diffusers DDIM", "diffusers DPM-Solver++(2M)",
                                                   "diffusers DPM-Solver++(2M) SDE")
ANCHOR_STEPS = (5, 10, 20, 35, 50, 100)


def _diffusers_scheduler(name: str):
    """The diffusers scheduler called ``name``, set up as its documentation sets it up for a T = 1000 linear-β DDPM."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == DIFFUSERS_DDIM:
        return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    # the SDE variant is the stochastic one, as pynodeta's SDE samplers are: compare like with like
    algorithm = {DIFFUSERS_DPM: "dpmsolver++", DIFFUSERS_DPM_SDE: "sde-dpmsolver++"}[name]
    return DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", algorithm_type=algorithm,
                                       solver_order=2)


@torch.no_grad()
def anchor_curves(network, reference: Reference, weights: str,
                  schedulers=(DIFFUSERS_DDIM, DIFFUSERS_DPM, DIFFUSERS_DPM_SDE), steps_list=ANCHOR_STEPS) -> list[dict]:
    """The anchor network under each of diffusers' ``schedulers`` at each step count, from seeded noise."""
    points = []
    for name in schedulers:
        for steps in steps_list:
            scheduler = _diffusers_scheduler(name)
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
def label(point: dict) -> str:
    """The sampler with the options it was drawn with: ``ddim (clip_x0=True)``."""
    return point["sampler"] + describe_sampler_options(point.get("sampler_options"))


def mean_points(points: list[dict]) -> list[dict]:
    """One point per model, sampler (with its options) and step count: the mean FD / floor over the seeds that drew
    it, its 95 % t-interval half-width (nan for one seed) and the seeds' own values, in seed order."""
    groups: dict[tuple, list[dict]] = {}
    for point in points:
        groups.setdefault((point["model"], label(point), point["steps"]), []).append(point)
    means = []
    for (model, sampler, steps), group in groups.items():
        group = sorted(group, key=lambda p: p["seed"])
        values = [p["fd_ratio"] for p in group]
        mean, half = mean_interval(values)
        means.append({"model": model, "sampler": sampler, "steps": steps,
                      "nfe": sum(p["nfe"] for p in group) / len(group), "fd_ratio": mean, "half_width": half,
                      "fd_ratios": values, "seeds": [p["seed"] for p in group]})
    return means


def matching_nfe(points: list[dict], model: str, target: float) -> tuple[float, str] | None:
    """The fewest NFE at which any sampler of ``model`` reaches FD / floor ≤ ``target``, and that sampler."""
    reached = [(p["nfe"], label(p)) for p in points if p["model"] == model and p["fd_ratio"] <= target]
    return min(reached) if reached else None


def _anchor_ddim50(points: list[dict]) -> dict | None:
    return next((p for p in points if p["sampler"] == DIFFUSERS_DDIM and p["steps"] == 50), None)


def _interval(point: dict) -> str:
    half = point.get("half_width", math.nan)
    return f"{point['fd_ratio']:.2f}" if math.isnan(half) else f"{point['fd_ratio']:.2f} ± {half:.2f}"


def _seed_values(point: dict) -> str:
    return ", ".join(f"{v:.2f}" for v in point["fd_ratios"])


def _summary(raw: dict, means: list[dict]) -> Table:
    """Per config: its training, its best point, and the fewest NFE at which it matches the anchor's DDIM-50, on
    the mean curves and within each seed against that seed's anchor."""
    anchor = _anchor_ddim50(means)
    rows = []
    for model in CONFIGS:
        fits = [raw["fits"][str(seed)][model] for seed in raw["seeds"] if model in raw["fits"].get(str(seed), {})]
        best = min((p for p in means if p["model"] == model), key=lambda p: p["fd_ratio"], default=None)
        match = matching_nfe(means, model, anchor["fd_ratio"]) if anchor else None
        each_seed = []
        for seed in raw["seeds"]:
            drawn = [p for p in raw["points"] if p["seed"] == seed]
            seed_anchor = _anchor_ddim50(drawn)
            seed_match = matching_nfe(drawn, model, seed_anchor["fd_ratio"]) if seed_anchor else None
            each_seed.append(f"{seed_match[0]:.0f}" if seed_match else "-")
        rows.append([model, round(sum(f["steps"] for f in fits) / len(fits)) if fits else "-",
                     round(sum(f["fd_ratio"] for f in fits) / len(fits), 2) if fits else "-",
                     f"{_interval(best)} ({best['sampler']}, NFE {best['nfe']:.0f})" if best else "-",
                     f"{match[0]:.0f} ({match[1]})" if match else "not reached", ", ".join(each_seed)])
    recipe = raw["anchor_recipe"]
    steps = ", ".join(str(raw["anchor_steps"][str(seed)]) for seed in raw["seeds"])
    caption = (f"{len(raw['seeds'])} seed(s) ({', '.join(map(str, raw['seeds']))}); anchor: diffusers "
               f"UNet2DModel, recipe {recipe}, {steps} steps in {raw['anchor_minutes']:g} min; its DDIM-50 reaches "
               f"FD / floor@1000 = {_interval(anchor)}" if anchor else "no anchor run")
    return Table(["pynodeta config", "training steps (mean)", "fit's own FD / floor (its N, mean)",
                  "best mean FD / floor@1000 (sampler, NFE)", "fewest NFE matching the anchor's DDIM-50 (mean curves)",
                  "the same within each seed"], rows, caption=caption)


def _best_within(means: list[dict]) -> Table:
    """The best mean FD / floor of each model within each NFE budget, and its sampler."""
    models = [*CONFIGS, "diffusers UNet2DModel"]
    rows = []
    for cap in NFE_CAPS:
        row = [cap]
        for model in models:
            best = min((p for p in means if p["model"] == model and p["nfe"] <= cap), key=lambda p: p["fd_ratio"],
                       default=None)
            row.append(f"{_interval(best)} ({best['sampler']}, {best['nfe']:.0f})" if best else "-")
        rows.append(row)
    return Table(["NFE at most", *models], rows,
                 caption="best mean FD / floor@1000 within the budget (sampler, its NFE)")


def save_quality_report(raw: dict, directory: Path | None = None) -> Path:
    directory = RESULTS_DIR if directory is None else directory  # read at call time: tests redirect it
    means = mean_points(raw["points"])
    rows = [[p["model"], p["sampler"], p["steps"], round(p["nfe"], 1), _interval(p), _seed_values(p)]
            for p in means]
    table = Table(["model", "sampler", "steps", "NFE", "FD / floor@1000 (mean, 95 % interval)", "each seed"], rows,
                  caption=f"{NUM} images per point from seeded noise; floor@1000 = {raw['floor']:.3f} "
                          f"(1000 training images against the test images, digits features)")
    Path(directory).mkdir(parents=True, exist_ok=True)
    plot = _plot(means, Path(directory) / f"{NAME}.png")
    runs = raw["config_runs"]
    notes = [f"pynodeta's models: {runs}, sampled with the weights their fit evaluated with; each config's own "
             "sampler with the options its shipped config gives it.",
             raw.get("machine_note", "")]
    return save_report(NAME, "Sample quality against network evaluations on the digits",
                       [_summary(raw, means), _best_within(means), table], notes=[n for n in notes if n],
                       plots=[plot.name] if plot else [], command=raw["command"],
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
        for index, sampler in enumerate(sorted({p["sampler"] for p in points if p["model"] == model})):
            curve = sorted((p["nfe"], p["fd_ratio"], p["half_width"]) for p in points
                           if p["model"] == model and p["sampler"] == sampler)
            nfe, fd, half = zip(*curve)
            half = [0.0 if math.isnan(h) else h for h in half]
            below = [min(h, f / 2) for f, h in zip(fd, half)]  # a log axis has no room below zero
            axis.errorbar(nfe, fd, yerr=[below, half], marker="o", markersize=3, capsize=2, label=sampler,
                          linestyle="-" if index < 10 else "--")  # the colour cycle repeats after ten
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_ylim(0.8, PLOT_TOP)  # the few-step points far above are in the table
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping minor labels
        axis.set_title(model)
        axis.set_xlabel("NFE")
        if axis.lines:
            axis.legend(fontsize="x-small")
    axes[0].set_ylabel("FD / floor@1000 (mean over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# --- one seed's sweep, kept so that a stopped run resumes -----------------------------------------------------------
def seed_sweep(seed: int, checkpoints: dict[str, Path], args, reference: Reference, folder: Path) -> dict:
    """Every pynodeta sampler on the seed's runs, then the anchor trained with that seed and its schedulers. Kept in
    ``folder/quality_per_nfe-seedS.json``; a kept sweep with the same settings is read back instead of redone."""
    settings = {"anchor_recipe": args.anchor_recipe, "anchor_minutes": args.anchor_minutes, "steps": args.steps,
                "max_nfe": args.max_nfe, "threads": args.threads,
                "checkpoints": {name: str(path) for name, path in checkpoints.items()}}

    def sweep() -> dict:
        points = []
        for name, checkpoint in checkpoints.items():
            points += pynodeta_curves(name, checkpoint, reference, args.steps, args.max_nfe)
        recipe = RECIPES[args.anchor_recipe]
        network, anchor_steps = train_anchor(recipe, args.anchor_minutes, reference.data, seed)
        points += anchor_curves(network, reference, weights=recipe.averaging())
        return {"seed": seed, "points": [{**p, "seed": seed} for p in points], "anchor_steps": anchor_steps,
                "fits": {name: fit_record(checkpoint.parents[2]) for name, checkpoint in checkpoints.items()}}

    return kept_record(folder / f"{NAME}-seed{seed}.json", settings, sweep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=None, help="where the configs' runs are (or are trained)")
    parser.add_argument("--race-dir", type=Path, default=None,
                        help="take the configs' runs from this digits race's --out folder instead")
    parser.add_argument("--race-seed", type=int, nargs="+", default=[0],
                        help="which of the race's seeds (with --race-dir); several are swept in turn")
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
    if args.runs_dir is not None and args.race_seed != [0]:
        parser.error("--race-seed: only with --race-dir (--runs-dir trains each config once)")
    if len(set(args.race_seed)) != len(args.race_seed):
        parser.error(f"--race-seed: each seed once, got {args.race_seed}")
    torch.set_num_threads(args.threads)
    reference = Reference()
    sweeps = []
    for seed in args.race_seed:
        if args.race_dir is not None:
            folder = args.race_dir.resolve()
            checkpoints = {name: race_checkpoint(name, folder, seed) for name in CONFIGS}
        else:
            folder = args.runs_dir.resolve()
            folder.mkdir(parents=True, exist_ok=True)
            checkpoints = {name: trained_checkpoint(name, folder) for name in CONFIGS}
        sweeps.append(seed_sweep(seed, checkpoints, args, reference, folder))
    seeds = ", ".join(map(str, args.race_seed))
    config_runs = (SHIPPED_RUNS if args.race_dir is None
                   else f"the digits race's seed {seeds} runs of the shipped configs")
    raw = {"seeds": args.race_seed, "points": [p for sweep in sweeps for p in sweep["points"]],
           "floor": reference.floor, "threads": args.threads, "anchor_minutes": args.anchor_minutes,
           "anchor_recipe": f"{args.anchor_recipe} ({RECIPES[args.anchor_recipe].describe()})",
           "config_runs": config_runs, "fits": {str(s["seed"]): s["fits"] for s in sweeps},
           "anchor_steps": {str(s["seed"]): s["anchor_steps"] for s in sweeps}, "machine_note": args.machine_note}
    print(save_quality_report(load_raw(save_raw(NAME, raw))))
    if not all(math.isfinite(p["fd_ratio"]) for p in raw["points"]):
        print("warning: some points have a non-finite FD", file=sys.stderr)


if __name__ == "__main__":
    main()
