"""Where the noise-level grid ends, against sample quality at few network evaluations, on the trained digits models.

    PYTHONPATH=. python3 benchmarks/sampling_grid.py --race-dir RACE --race-seed 0 1 2 [--threads 2]

Each sampler walks Karras et al.'s ρ = 7 levels from the model's σ_max down to a last non-zero level σ_min, then to
0. By default σ_min is the model's own smallest level (0.01 for a T = 1000 DDPM, EDM's 0.002), far below the noise
that matters for 8×8 digits with 17 grey levels; diffusers' DPM-Solver++ grid on a DDPM stops at t = T/n instead
(σ = 0.34 for n = 10). Here every sampler is drawn at each step count with the grid option ``sigma_min`` set to each
of ``--sigma-min`` (``model``: the default) on the digits race's fits of the shipped configs
(``diffusion_vs_diffusers.py race --out RACE``: ``RACE/runs/NAME_seedS/version_0``), 1000 images from the same
seeded noise for every grid, scored as FD / floor@1000 in the digits features. With ``--anchor-minutes`` (default
8) the race's tuned diffusers anchor is trained for each seed too and drawn with diffusers' DPM-Solver++(2M) and,
through ``external_denoiser``, with the same pynodeta samplers and grids. The report gives, per model and
NFE budget, the best sampler on the default grid and the best with a raised σ_min, and per point the change that
each σ_min makes on the same fit and noise: the mean over seeds of the paired differences, with a 95 % t-interval.
Each config's and anchor's points of a seed are kept in ``RACE/sampling_grid-seedS-NAME.json`` once drawn, so a
stopped run resumes where it stopped and a later run with more configs or the anchor adds to the kept points.
Saves benchmarks/results/sampling_grid.json and the raw measurements under results/raw/; ``--from-raw FILE``
rebuilds the report from them.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusion_vs_diffusers import mean_interval  # noqa: E402
from digits_anchor import NUM, Reference, fit_record  # noqa: E402
from quality_per_nfe import (  # noqa: E402
    CONFIGS,
    DIFFUSERS_DPM,
    RECIPES,
    SEED,
    TUNED_RECIPE,
    anchor_curves,
    race_checkpoint,
)

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

NAME = "sampling_grid"
SAMPLERS = ("dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde")  # the best few-step samplers of quality_per_nfe
STEPS = (5, 10, 18)
SIGMA_MINS = ("model", 0.1, 0.2, 0.4)
MAX_NFE = 20  # the few-step regime where the grid's end matters; the 35-NFE configs are quality_per_nfe's
NFE_CAPS = (10, 20)
DEFAULT = "model"
ANCHOR = "diffusers UNet2DModel"


def _grid_value(text: str):
    """``model`` or a noise level > 0 (``--sigma-min``)."""
    if text == DEFAULT:
        return DEFAULT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"a noise level > 0 or '{DEFAULT}' (the model's own grid), got {text!r}")
    return value


def grid_points(name: str, checkpoint: Path, reference: Reference, samplers, steps_list, sigma_mins,
                max_nfe: float = MAX_NFE) -> list[dict]:
    """Every (sampler, steps, σ_min) of one fit, from the same seeded noise; a sampler's steps stop at the first
    count whose NFE exceeds ``max_nfe``."""
    from pynodeta.train.diffusion_sampling import generate
    from pynodeta.train.sample_cli import load_diffusion_run

    run, weights = load_diffusion_run(str(checkpoint), None)
    module = run.module.eval()

    def draw(sampler: str, steps: int, sigma_min) -> tuple[float, torch.Tensor]:
        options = {} if sigma_min == DEFAULT else {"sigma_min": sigma_min}
        samples = generate(module, NUM, sampler, steps, generator=torch.Generator().manual_seed(SEED),
                           sampler_options=options)
        return samples.nfe, samples.images

    return _within_budget(name, weights, reference, samplers, steps_list, sigma_mins, max_nfe, draw)


def _within_budget(model: str, weights: str, reference: Reference, samplers, steps_list, sigma_mins,
                   max_nfe: float, draw) -> list[dict]:
    """A point per (sampler, steps, σ_min) from ``draw(sampler, steps, σ_min) -> (NFE, images)``; a sampler's
    steps stop at the first count whose NFE exceeds ``max_nfe`` (the larger counts would too)."""
    points = []
    for sampler in samplers:
        for steps in steps_list:
            over_budget = False
            for sigma_min in sigma_mins:
                started = time.perf_counter()
                nfe, images = draw(sampler, steps, sigma_min)
                if nfe > max_nfe:
                    over_budget = True
                    break
                points.append({"model": model, "sampler": sampler, "steps": steps, "sigma_min": sigma_min,
                               "nfe": nfe, "fd_ratio": reference.fd_ratio(images), "weights": weights,
                               "seconds": time.perf_counter() - started})
                print(f"{model} {sampler} steps {steps} sigma_min {sigma_min}: NFE {nfe:.0f}, "
                      f"FD/floor {points[-1]['fd_ratio']:.3f}", flush=True)
            if over_budget:
                break
    return points


@torch.no_grad()
def anchor_points(network, reference: Reference, weights: str, samplers, steps_list, sigma_mins,
                  max_nfe: float = MAX_NFE) -> list[dict]:
    """The anchor network under diffusers' DPM-Solver++(2M) as its documentation sets it up (its own grid), and
    under pynodeta's samplers through ``pynodeta.diffusion.external_denoiser`` on Karras levels down to the
    schedule's smallest σ and to each raised σ_min: the same network and noise, only the sampler and grid differ."""
    from diffusers import DDPMScheduler

    import pynodeta.diffusion as pd
    from pynodeta.ode.stats import record_stats

    denoiser = pd.external_denoiser(network, scheduler=DDPMScheduler(num_train_timesteps=1000,
                                                                     beta_schedule="linear"))
    points = [{**point, "sigma_min": DEFAULT}  # its own grid, the only one it has
              for point in anchor_curves(network, reference, weights, schedulers=[DIFFUSERS_DPM],
                                         steps_list=[steps for steps in steps_list if steps <= max_nfe])]

    def draw(sampler: str, steps: int, sigma_min) -> tuple[float, torch.Tensor]:
        low = denoiser.sigma_min if sigma_min == DEFAULT else sigma_min
        sigmas = pd.karras_sigmas(steps, sigma_min=low, sigma_max=denoiser.sigma_max)
        generator = torch.Generator().manual_seed(SEED)
        noise = torch.randn(NUM, 1, 8, 8, generator=generator)
        with record_stats() as log:
            x = pd.SAMPLERS[sampler](denoiser, noise * sigmas[0], sigmas, generator=generator, disable=True)
        return float(sum(stats.nfe for stats in log)), x

    return points + _within_budget(ANCHOR, weights, reference, samplers, steps_list, sigma_mins, max_nfe, draw)


def seed_points(seed: int, race: Path, args, reference: Reference) -> dict:
    """One seed's points: each config's, kept in ``RACE/sampling_grid-seedS-CONFIG.json``, then the anchor's, trained
    for that seed and kept in ``RACE/sampling_grid-seedS-anchor.json`` (each read back when its settings match, so
    that configs and anchors can be added to an earlier run's points)."""
    checkpoints = {name: race_checkpoint(name, race, seed) for name in args.configs}

    def config(name: str, checkpoint: Path):
        return lambda: {"points": grid_points(name, checkpoint, reference, args.samplers, args.steps, args.sigma_min,
                                              args.max_nfe),
                        "fit": fit_record(checkpoint.parents[2])}

    def anchor() -> dict:
        from digits_anchor import train_anchor

        recipe = RECIPES[TUNED_RECIPE]
        network, steps = train_anchor(recipe, args.anchor_minutes, reference.data, seed)
        return {"points": anchor_points(network, reference, recipe.averaging(), args.anchor_samplers, args.steps,
                                        args.sigma_min, args.max_nfe),
                "anchor_steps": steps}

    points, fits, anchor_steps = [], {}, None
    for name, checkpoint in checkpoints.items():
        settings = {"samplers": args.samplers, "steps": args.steps, "sigma_mins": args.sigma_min,
                    "max_nfe": args.max_nfe, "checkpoint": str(checkpoint)}
        record = kept_record(race / f"{NAME}-seed{seed}-{name}.json", settings, config(name, checkpoint))
        points += record["points"]
        fits[name] = record["fit"]
    if args.anchor_minutes > 0:
        settings = {"samplers": args.anchor_samplers, "steps": args.steps, "sigma_mins": args.sigma_min,
                    "max_nfe": args.max_nfe, "recipe": TUNED_RECIPE, "minutes": args.anchor_minutes,
                    "threads": args.threads}
        record = kept_record(race / f"{NAME}-seed{seed}-anchor.json", settings, anchor)
        points += record["points"]
        anchor_steps = record["anchor_steps"]
    return {"seed": seed, "points": [{**p, "seed": seed} for p in points], "anchor_steps": anchor_steps,
            "fits": fits}


# --- the report ---------------------------------------------------------------------------------------------------
def _key(point: dict) -> tuple:
    return point["model"], point["sampler"], point["steps"]


def paired(points: list[dict]) -> list[dict]:
    """Per (model, sampler, steps, σ_min): mean NFE, mean FD / floor with its 95 % t half-width, and the mean of
    the per-seed differences to the default grid on the same fit and noise with its half-width."""
    default = {(*_key(p), p["seed"]): p["fd_ratio"] for p in points if p["sigma_min"] == DEFAULT}
    groups: dict[tuple, list[dict]] = {}
    for point in points:
        groups.setdefault((*_key(point), point["sigma_min"]), []).append(point)
    rows = []
    for (model, sampler, steps, sigma_min), group in groups.items():
        values = [p["fd_ratio"] for p in group]
        changes = [p["fd_ratio"] - default[(model, sampler, steps, p["seed"])] for p in group]
        mean, half = mean_interval(values)
        change, change_half = mean_interval(changes)
        rows.append({"model": model, "sampler": sampler, "steps": steps, "sigma_min": sigma_min,
                     "nfe": sum(p["nfe"] for p in group) / len(group), "fd_ratio": mean, "half_width": half,
                     "change": change, "change_half_width": change_half, "seeds": len(group)})
    return rows


def _pm(mean: float, half: float, signed: bool = False) -> str:
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if math.isnan(half) else f"{text} ± {half:.2f}"


def _best(rows: list[dict], model: str, cap: float, raised: bool) -> dict | None:
    chosen = [r for r in rows if r["model"] == model and r["nfe"] <= cap and (r["sigma_min"] != DEFAULT) == raised]
    return min(chosen, key=lambda r: r["fd_ratio"], default=None)


def _budget_table(rows: list[dict], models: list[str]) -> Table:
    table_rows = []
    for model in models:
        for cap in NFE_CAPS:
            on_default, raised = _best(rows, model, cap, False), _best(rows, model, cap, True)
            if on_default is None:
                continue
            same = next(r for r in rows if _key(r) == _key(on_default) and r["sigma_min"] == DEFAULT)
            table_rows.append([model, cap, f"{_pm(same['fd_ratio'], same['half_width'])} ({same['sampler']}, "
                                            f"{same['nfe']:.0f})",
                               f"{_pm(raised['fd_ratio'], raised['half_width'])} ({raised['sampler']}, "
                               f"{raised['nfe']:.0f}, σ_min {raised['sigma_min']:g})" if raised else "-",
                               _pm(raised["change"], raised["change_half_width"], signed=True) if raised else "-"])
    return Table(["model", "NFE at most", "best on the model's grid (sampler, NFE)",
                  "best with a raised σ_min (sampler, NFE, σ_min)", "its change against the same sampler and steps "
                  "on the model's grid (paired)"], table_rows,
                 caption="mean FD / floor@1000 over the seeds with a 95 % t-interval; the best of each column is "
                         "chosen on these means, so it carries a selection effect")


def save_grid_report(raw: dict, directory: Path | None = None) -> Path:
    directory = RESULTS_DIR if directory is None else directory
    rows = paired(raw["points"])
    models = [m for m in (*CONFIGS, ANCHOR) if any(r["model"] == m for r in rows)]
    raised = [s for s in raw["sigma_mins"] if s != DEFAULT]
    detail = []
    for model in models:
        for sampler in dict.fromkeys((DIFFUSERS_DPM, *raw["samplers"], *raw["anchor_samplers"])):
            for steps in raw["steps"]:
                cells = {r["sigma_min"]: r for r in rows if _key(r) == (model, sampler, steps)}
                if DEFAULT not in cells:
                    continue
                base = cells[DEFAULT]
                detail.append([model, sampler, steps, round(base["nfe"], 1), _pm(base["fd_ratio"], base["half_width"]),
                               *(_pm(cells[s]["change"], cells[s]["change_half_width"], signed=True)
                                 if s in cells else "-" for s in raised)])
    detail_table = Table(["model", "sampler", "steps", "NFE", "FD / floor@1000 on the model's grid",
                          *(f"change with σ_min {s:g}" for s in raised)], detail,
                         caption="the change is the mean over seeds of FD(σ_min) − FD(model's grid) on the same "
                                 "fit and noise, with its 95 % t-interval: negative is better")
    fits = "; ".join(f"seed {seed}: " + ", ".join(f"{model} {fit['steps']} steps"
                                                  for model, fit in raw["fits"][str(seed)].items())
                     for seed in raw["seeds"])
    notes = [f"{len(raw['seeds'])} seed(s) ({', '.join(map(str, raw['seeds']))}), {NUM} images per point from seeded "
             f"noise (seed {SEED}), floor@1000 = {raw['floor']:.3f}; the fits ({raw['config_runs']}): {fits}.",
             raw.get("machine_note", "")]
    if raw["anchor_minutes"] > 0:
        steps = ", ".join(str(raw["anchor_steps"][str(seed)]) for seed in raw["seeds"])
        notes.insert(1, f"The anchor: diffusers' UNet2DModel trained with diffusers' DDPMScheduler (T = 1000, linear "
                        f"β) for {raw['anchor_minutes']:g} min per seed under the race's tuned recipe {TUNED_RECIPE} "
                        f"({steps} steps); `{DIFFUSERS_DPM}` is diffusers' DPMSolverMultistepScheduler as its "
                        "documentation sets it up (its grid ends at t = T/n), the other samplers are pynodeta's on "
                        "the same network through `pynodeta.diffusion.external_denoiser` (nearest timestep).")
    return save_report(NAME, "Where the sampling grid ends: few-step quality on the digits models",
                       [_budget_table(rows, models), detail_table], notes=[n for n in notes if n],
                       command=raw["command"], machine=raw_machine(raw, threads=raw["threads"]), directory=directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--race-dir", type=Path, help="a digits race's --out folder: its fits are sampled")
    parser.add_argument("--race-seed", type=int, nargs="+", default=[0], help="which of the race's seeds")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--sigma-min", type=_grid_value, nargs="+", default=list(SIGMA_MINS),
                        help="the grid's last non-zero level; 'model' is the model's own (the default grid)")
    parser.add_argument("--max-nfe", type=float, default=MAX_NFE, help="a sampler's steps stop above this NFE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--anchor-samplers", nargs="+", default=["dpmpp_2m"],
                        help="pynodeta's samplers on the anchor network, beside diffusers' DPM-Solver++(2M)")
    parser.add_argument("--anchor-minutes", type=float, default=8.0,
                        help="train the race's tuned diffusers anchor per seed for this long and sample it too (0: no "
                             "anchor)")
    parser.add_argument("--config-runs", default="the digits race's fits of the shipped configs",
                        help="how the race's fits were trained, for the report")
    parser.add_argument("--machine-note", default="", help="how the machine was shared during the run")
    add_from_raw(parser, "sampling")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_grid_report):
        return
    if args.race_dir is None:
        parser.error("--race-dir: the digits race's folder whose fits are sampled")
    if DEFAULT not in args.sigma_min:
        parser.error("--sigma-min: include 'model' (the default grid): every change is measured against it")
    if len(set(args.race_seed)) != len(args.race_seed):
        parser.error(f"--race-seed: each seed once, got {args.race_seed}")
    torch.set_num_threads(args.threads)
    reference = Reference()
    records = [seed_points(seed, args.race_dir.resolve(), args, reference) for seed in args.race_seed]
    raw = {"seeds": args.race_seed, "samplers": args.samplers, "anchor_samplers": args.anchor_samplers,
           "steps": args.steps, "sigma_mins": args.sigma_min,
           "points": [p for record in records for p in record["points"]], "floor": reference.floor,
           "threads": args.threads, "config_runs": args.config_runs, "anchor_minutes": args.anchor_minutes,
           "anchor_steps": {str(r["seed"]): r["anchor_steps"] for r in records},
           "fits": {str(r["seed"]): r["fits"] for r in records}, "machine_note": args.machine_note}
    print(save_grid_report(load_raw(save_raw(NAME, raw))))


if __name__ == "__main__":
    main()
