"""The digits race: every shipped digits config, run as its users run it, against diffusers' UNet2DModel trained
with diffusers' own recipe tuned for the same budget (the same wall time and threads), scored at N = 1000.

    # 1. tune the anchor: diffusers' recipe with its learning rate, batch and EMA varied (one raw file per run)
    python3 benchmarks/diffusion_vs_diffusers.py sweep --out SWEEP [--candidates NAME ...] --minutes 8 --threads 2
    # 2. the race, per seed: the sweep's best recipe, then `pynodeta fit` / `phema` / `sample --num 1000` per config
    python3 benchmarks/diffusion_vs_diffusers.py race --out RACE --sweep-dir SWEEP --seeds 0 1 2 --minutes 8
    python3 benchmarks/diffusion_vs_diffusers.py --from-raw benchmarks/results/raw/diffusers_race.json

The anchor's base recipe is diffusers' documented one for unconditional training
(examples/unconditional_image_generation/train_unconditional.py in huggingface/diffusers: AdamW lr 1e-4, betas
(0.95, 0.999), weight decay 1e-6, eps 1e-8; cosine schedule after 500 warm-up steps; gradient norm clipped at 1;
``EMAModel`` with ``use_ema_warmup``, inv_gamma 1, power 3/4, max decay 0.9999; DDPMScheduler, T = 1000 linear,
ε-prediction; batch 16 per device). Its network is the small UNet2DModel of ``digits_anchor.anchor_network``. The
sweep varies learning rate, batch and EMA around it, as pynodeta's configs were tuned for this budget; every
candidate is sampled with diffusers' DDIMScheduler, 50 steps.

pynodeta runs as a user runs it: ``pynodeta fit --config NAME --seed_everything S --num_threads T`` (the configs'
own ``max_time`` / ``max_epochs``, left as shipped), for EDM2 ``pynodeta phema --sigma-rel 0.10``, then
``pynodeta sample --num N`` with the config's sampler and its options as shipped (a resumed race re-samples a
finished fit with the config's current sampler after its record is deleted). Every image set is scored in the
digits features against the test images over the floor at the same N (N training images). Each run writes its
own JSON into ``--out``, so an interrupted sweep or race resumes where it stopped; at the end the runs are gathered
into one raw file and its report (``--results-dir``, default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from pynodeta._atomic import atomic_write_text
from pynodeta.train.configs import shipped_config_path
from pynodeta.train.diffusion_sampling import OWN_STEP_SAMPLERS, describe_sampler_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_anchor import NUM, Recipe, Reference, candidate_recipes, ddim_images, train_anchor  # noqa: E402

from reporting import RESULTS_DIR, Table, load_raw, raw_machine, save_raw, save_report  # noqa: E402

SWEEP, RACE = "diffusers_sweep", "diffusers_race"
CONFIGS = ("digits_ddpm", "digits_edm", "digits_edm2")
TARGET = 0.7           # the target: each config's FD / floor at most 0.7× the tuned anchor's
SAMPLE_SEED = 7
PHEMA_SIGMA_REL = 0.10
CANDIDATES = candidate_recipes()
# `pynodeta sample`'s last line: sampler (its options, if any), NFE, weights
SAMPLE_LINE = re.compile(r"sampler (\S+)(?: \(.*?\))?, NFE ([\d.]+), weights (.+?) ->")


# --- pure helpers -------------------------------------------------------------------------------------------------
def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t ``confidence`` interval of the mean); half-width nan for one value."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        raise ValueError("mean_interval needs at least one value; got none")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)


def best_recipe(runs: list[dict]) -> str:
    """The recipe whose runs have the lowest mean FD / floor (its seeds averaged)."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        scores.setdefault(run["recipe"], []).append(run["fd_ratio"])
    if not scores:
        raise ValueError("best_recipe: no sweep runs; run the sweep first or name the recipe with --anchor")
    return min(scores, key=lambda name: sum(scores[name]) / len(scores[name]))


def _format(values) -> str:
    mean, half = mean_interval(values)
    return f"{mean:.2f}" if math.isnan(half) else f"{mean:.2f} ± {half:.2f}"


def _runs(folder: Path, prefix: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob(f"{prefix}-*.json"))]


def _write(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, default=float) + "\n")
    print(f"{path.name}: FD / floor@{record['num_samples']} {record['fd_ratio']:.3f}, {record['steps']} steps",
          flush=True)


# --- measuring ------------------------------------------------------------------------------------------------------
def anchor_run(name: str, seed: int, args, reference: Reference) -> dict:
    """Train the anchor with recipe ``name`` for ``args.minutes`` and score its DDIM-50 images."""
    recipe = CANDIDATES[name]
    network, steps = train_anchor(recipe, args.minutes, reference.data, seed)
    started = time.perf_counter()
    images = ddim_images(network, args.num_samples, 50, SAMPLE_SEED)
    return {"model": "diffusers UNet2DModel", "recipe": name, "settings": recipe.to_dict(), "seed": seed,
            "steps": steps, "train_seconds": 60 * args.minutes, "sampler": "diffusers DDIM", "nfe": 50.0,
            "sample_seconds": time.perf_counter() - started, "fd_ratio": reference.fd_ratio(images),
            "num_samples": args.num_samples, "floor": reference.floor, "threads": args.threads}


def _cli(*arguments, cwd: Path) -> str:
    command = [sys.executable, "-m", "pynodeta.cli", *map(str, arguments)]
    print("running: pynodeta", shlex.join(command[3:]), flush=True)
    done = subprocess.run(command, check=True, cwd=cwd, stdout=subprocess.PIPE, text=True)
    print(done.stdout[-2000:], end="", flush=True)
    return done.stdout


def race_run_dir(out: Path, config: str, seed: int) -> Path:
    """Where the race keeps ``config``'s seed-``seed`` fit: ``OUT/runs/CONFIG_seedS/version_0``."""
    return Path(out) / "runs" / f"{config}_seed{seed}" / "version_0"


def shipped_config(config: str) -> dict:
    """The shipped ``config`` as written today, its evaluation's ``sampler_options`` always present ({} when
    none): a race's or sweep's run trained before a change of sampler is drawn as the config now is."""
    shipped = yaml.safe_load(shipped_config_path(config).read_text())
    evaluation = shipped["model"]["init_args"]["evaluation"]
    evaluation["sampler_options"] = evaluation.get("sampler_options") or {}
    return shipped


def shipped_evaluation(config: str) -> dict:
    """The shipped ``config``'s evaluation settings (``sampler``, ``steps``, ``sampler_options``, …)."""
    return shipped_config(config)["model"]["init_args"]["evaluation"]


def pynodeta_run(config: str, seed: int, args, reference: Reference) -> dict:
    """``pynodeta fit`` as shipped (seed and threads set), EDM2's post-hoc EMA, ``pynodeta sample``, scored."""
    from digits_anchor import fit_record

    runs = (args.out / "runs").resolve()
    name = f"{config}_seed{seed}"
    finished = runs / f"{name}.fit.json"  # written once the fit has ended: a later resume samples without refitting
    if not finished.is_file():
        if (runs / name).exists():  # a fit that did not finish: start it again
            shutil.rmtree(runs / name)
        runs.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        _cli("fit", "--config", config, "--seed_everything", seed, "--num_threads", args.threads,
             "--trainer.logger.init_args.save_dir", runs, "--trainer.logger.init_args.name", name,
             *shlex.split(args.fit_args), cwd=runs)
        atomic_write_text(finished, json.dumps({"fit_seconds": time.perf_counter() - started,
                                                "fit_args": args.fit_args}))
    fitted = json.loads(finished.read_text())  # a resume that only samples keeps the options the fit ran with
    fit_seconds, fit_args = fitted["fit_seconds"], fitted.get("fit_args", args.fit_args)
    root = race_run_dir(args.out.resolve(), config, seed)
    checkpoint = root / "checkpoints" / "last.ckpt"
    if config == "digits_edm2":  # the weights for EDM2: the post-hoc EMA at σ_rel 0.10
        posthoc = root / "phema-0.10.ckpt"
        _cli("phema", "--snapshots", root / "phema", "--sigma-rel", PHEMA_SIGMA_REL, "--checkpoint", checkpoint,
             "--out", posthoc, cwd=runs)
        checkpoint = posthoc
    images_path = root / f"samples-{args.num_samples}.pt"
    shipped = shipped_config(config)
    evaluation = shipped["model"]["init_args"]["evaluation"]  # the config's sampler now, not at its fit
    sampler_options = evaluation["sampler_options"]
    option_flags = [flag for name, value in sampler_options.items()
                    for flag in ("--sampler-option", f"{name}={json.dumps(value)}")]  # JSON scalars read as YAML
    steps = [] if evaluation["sampler"] in OWN_STEP_SAMPLERS else ["--steps", evaluation["steps"]]  # refused there
    started = time.perf_counter()
    output = _cli("sample", "--checkpoint", checkpoint, "--config", root / "config.yaml", "--num", args.num_samples,
                  "--sampler", evaluation["sampler"], *steps, *option_flags,
                  "--seed", SAMPLE_SEED, "--num-threads", args.threads, "--out", "none", "--save-tensor", images_path,
                  cwd=runs)
    sample_seconds = time.perf_counter() - started
    drawn = SAMPLE_LINE.search(output)
    if drawn is None:
        raise RuntimeError(f"pynodeta sample's last line changed; cannot read its sampler and NFE from {output!r}")
    images = torch.load(images_path, weights_only=True)
    limits = shipped["trainer"]
    fit = fit_record(runs / name)
    return {"model": config, "seed": seed, "steps": fit["steps"], "epochs": fit["epochs"], "fit": fit,
            "fit_seconds": fit_seconds, "max_time": limits.get("max_time"), "max_epochs": limits.get("max_epochs"),
            "fit_args": fit_args, "sampler": drawn[1], "sampler_options": sampler_options, "nfe": float(drawn[2]),
            "weights": drawn[3], "sample_seconds": sample_seconds, "fd_ratio": reference.fd_ratio(images),
            "num_samples": args.num_samples, "floor": reference.floor, "threads": args.threads}


class _LazyReference:
    """The reference, built the first time a run is scored (a resumed race may have nothing left to score)."""

    def __init__(self, num: int):
        self.num, self._reference = num, None

    def __getattr__(self, name):
        if self._reference is None:
            self._reference = Reference(self.num)
        return getattr(self._reference, name)


def run_sweep(args) -> Path:
    reference = Reference(args.num_samples)
    for name in args.candidates:
        path = args.out / f"sweep-{name}-seed{args.seed}.json"
        if path.is_file():
            print(f"{path.name}: done, skipped", flush=True)
            continue
        _write(path, anchor_run(name, args.seed, args, reference))
    return _gather(args, "sweep", SWEEP, save_sweep_report)


def run_race(args) -> Path:
    if args.anchor is None:
        args.anchor = best_recipe(_runs(args.sweep_dir, "sweep"))
    reference = _LazyReference(args.num_samples)
    for seed in args.seeds:  # one model at a time: each has the machine to itself
        for model in ("anchor", *args.configs):
            path = args.out / f"race-{model}-seed{seed}.json"
            if path.is_file():
                print(f"{path.name}: done, skipped", flush=True)
                continue
            swept = _swept_anchor(args, seed) if model == "anchor" else None
            if swept is not None:  # the sweep trained this recipe and seed with the same budget: reused
                record = {**swept, "from_sweep": True}
            else:
                record = (anchor_run(args.anchor, seed, args, reference) if model == "anchor"
                          else pynodeta_run(model, seed, args, reference))
            _write(path, record)
    return _gather(args, "race", RACE, save_race_report)


def _swept_anchor(args, seed: int) -> dict | None:
    """The sweep's run of the race's anchor recipe and seed, when it had the race's budget and sample count."""
    if args.sweep_dir is None:
        return None
    path = Path(args.sweep_dir) / f"sweep-{args.anchor}-seed{seed}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    same = record["train_seconds"] == 60 * args.minutes and record["num_samples"] == args.num_samples
    return record if same and record.get("threads", args.threads) == args.threads else None


def _gather(args, prefix: str, name: str, build) -> Path:
    """Every run in ``--out`` into one raw file and its report under ``--results-dir``."""
    raw = {"kind": prefix, "minutes": args.minutes, "threads": args.threads, "num_samples": args.num_samples,
           "machine_note": args.machine_note, "runs": _runs(args.out, prefix)}
    return build(load_raw(save_raw(name, raw, args.results_dir / "raw")), args.results_dir)


# --- the reports ----------------------------------------------------------------------------------------------------
def _caption(raw: dict) -> str:
    floor = raw["runs"][0]["floor"] if raw["runs"] else math.nan
    return (f"{raw['minutes']:g} min of training on {raw['threads']} thread(s); N = {raw['num_samples']} images per "
            f"run; floor@{raw['num_samples']} = {floor:.3f} ({raw['num_samples']} training images against the test "
            "images, digits features); mean ± 95 % t-interval over seeds")


def save_sweep_report(raw: dict, directory: Path | None = None) -> Path:
    """Recipe -> FD / floor of its DDIM-50 images and its steps, best first."""
    by_recipe: dict[str, list[dict]] = {}
    for run in raw["runs"]:
        by_recipe.setdefault(run["recipe"], []).append(run)
    order = sorted(by_recipe, key=lambda r: sum(x["fd_ratio"] for x in by_recipe[r]) / len(by_recipe[r]))
    rows = [[name, Recipe(**{**runs[0]["settings"], "betas": tuple(runs[0]["settings"]["betas"])}).describe(),
             len(runs), round(sum(r["steps"] for r in runs) / len(runs)),
             _format([r["fd_ratio"] for r in runs])] for name, runs in ((n, by_recipe[n]) for n in order)]
    table = Table(["recipe", "settings", "seeds", "steps", f"DDIM-50 FD / floor@{raw['num_samples']}"], rows,
                  caption=_caption(raw))
    notes = [f"Best recipe: {order[0]}; the race trains the anchor with it." if order else "No runs.",
             "The base is diffusers' documented unconditional recipe (train_unconditional.py); its cosine schedule "
             "decays over the wall-time budget, since the step count of a budget in minutes is not known ahead.",
             "The table gathers every run in the sweep's --out folder; the command is the last one run into it, and "
             "earlier ones (other --candidates) trained the other recipes.",
             raw.get("machine_note", "")]
    title = f"The diffusers anchor's recipe, swept for {raw['minutes']:g} minutes on the digits"
    return save_report(SWEEP, title, [table],
                       notes=[n for n in notes if n], command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]),
                       directory=RESULTS_DIR if directory is None else directory)


def _training_limits(runs: list[dict]) -> str:
    """The max_time and max_epochs each run trained under: the shipped config's at the time, unless its extra fit
    options set them; runs with different limits are listed in seed order."""
    limits = []
    for run in runs:
        options = shlex.split(run.get("fit_args", ""))
        chosen = {"max_time": run["max_time"], "max_epochs": run["max_epochs"]}
        for key in chosen:
            flag = f"--trainer.{key}"
            if flag in options[:-1]:
                chosen[key] = options[options.index(flag) + 1]
        text = f"max_time {chosen['max_time']}, max_epochs {chosen['max_epochs']}"
        if text not in limits:
            limits.append(text)
    return "; ".join(limits)


def _samplers(runs: list[dict]) -> str:
    """Each distinct sampler of ``runs`` with its options and NFE, e.g. ``ddim (clip_x0=True), NFE 50``; runs
    sampled differently (a record kept from before a config's change) are listed in seed order."""
    seen = []
    for run in runs:
        text = f"{run['sampler']}{describe_sampler_options(run.get('sampler_options'))}, NFE {run['nfe']:g}"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def target_against_floor(anchor_mean: float, num_samples: int) -> str:
    """What the target asks in units of the floor: a score of 1.0 is N of the training images themselves, so a
    target below it asks for samples closer to the test images than the data the model learns from."""
    target = TARGET * anchor_mean
    where = ("below 1.0, the score of the training images themselves, so no model of the training data can be "
             "expected to reach it" if target < 1.0 else "above 1.0, the score of the training images themselves")
    return (f"{TARGET}x the anchor's mean is FD / floor@{num_samples} {target:.2f}: {where}; at the floor a config "
            f"would be {1.0 / anchor_mean:.2f}x the anchor.")


def save_race_report(raw: dict, directory: Path | None = None) -> Path:
    """Model -> FD / floor over seeds, its ratio to the tuned anchor, sampler and NFE, steps."""
    by_model: dict[str, list[dict]] = {}
    for run in raw["runs"]:
        by_model.setdefault(run["model"], []).append(run)
    anchor = by_model.get("diffusers UNet2DModel", [])
    anchor_mean = mean_interval([r["fd_ratio"] for r in anchor])[0] if anchor else math.nan
    rows, verdicts = [], []
    for model, runs in by_model.items():
        ratios = [r["fd_ratio"] for r in runs]
        relative = [x / anchor_mean for x in ratios]
        limit = (f"recipe {runs[0]['recipe']}, {raw['minutes']:g} min" if "recipe" in runs[0]
                 else f"{_training_limits(runs)} (ran {'/'.join(str(r['epochs']) for r in runs)} epochs)")
        seconds = [r.get("fit_seconds", r.get("train_seconds")) for r in runs]
        rows.append([model, limit, len(runs), round(sum(r["steps"] for r in runs) / len(runs)),
                     round(sum(seconds) / len(seconds)), round(sum(r["sample_seconds"] for r in runs) / len(runs)),
                     _samplers(runs), _format(ratios), _format(relative)])
        if "recipe" not in runs[0]:
            met = mean_interval(relative)[0] <= TARGET
            verdicts.append(f"{model} {mean_interval(relative)[0]:.2f}x ({'met' if met else 'not met'})")
    table = Table(["model", "training limit", "seeds", "steps", "training s (fit: with its evaluation)",
                   f"sampling s ({raw['num_samples']} images)", "sampler", f"FD / floor@{raw['num_samples']}",
                   "ratio to the tuned anchor"], rows, caption=_caption(raw))
    fit_args = sorted({f"{r['model']} seed {r['seed']}: {r['fit_args']}" for r in raw["runs"] if r.get("fit_args")})
    raced = {m for m in by_model if m in CONFIGS}
    overall = ("met by every shipped config" if raced == set(CONFIGS) and all("(met)" in v for v in verdicts)
               else "not met" if any("not met" in v for v in verdicts) else "not all configs measured")
    notes = [f"Target: every shipped digits config at most {TARGET}x the tuned anchor's FD / floor@"
             f"{raw['num_samples']} (mean over seeds): {overall}; "
             + ("; ".join(verdicts) if verdicts else "no pynodeta runs") + ".",
             target_against_floor(anchor_mean, raw["num_samples"]) if anchor else "",
             "pynodeta ran as a user runs it: `pynodeta fit --config NAME --seed_everything S --num_threads T`, "
             "with each config's max_time and max_epochs as shipped at the time of the run (the training limit "
             "column), digits_edm2 through `pynodeta phema --sigma-rel 0.10`, then "
             "`pynodeta sample` with the config's sampler and its options as shipped at the time of sampling (the "
             "sampler column); the anchor trains for the full budget. Steps are the fit's last logged step + 1 "
             "(metrics.csv).",
             "The anchor samples as diffusers' users get it: `DDIMScheduler(num_train_timesteps=1000, "
             "beta_schedule='linear')`, 50 steps, eta 0, its defaults otherwise ('leading' timestep spacing, x0 "
             "clipped to [-1, 1] at every step: clip_sample=True).",
             f"Extra fit options: {'; '.join(fit_args)}." if fit_args else "",
             raw.get("machine_note", "")]
    return save_report(RACE, "The digits race: shipped configs against diffusers' tuned recipe at equal time",
                       [table], notes=[n for n in notes if n], command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]),
                       directory=RESULTS_DIR if directory is None else directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-raw", type=Path, default=None,
                        help="rebuild a report (sweep or race) from its gathered raw file, without training")
    commands = parser.add_subparsers(dest="command")
    for name in ("sweep", "race"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", type=Path, required=True, help="folder of the per-run records (resumable)")
        sub.add_argument("--minutes", type=float, default=8.0, help="training wall time of the anchor")
        sub.add_argument("--threads", type=int, default=2, help="torch threads of every run")
        sub.add_argument("--num-samples", type=int, default=NUM, help="images per run; the floor uses as many")
        sub.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the raw file and report go")
        sub.add_argument("--machine-note", default="", help="how the machine was shared during the run")
    sweep, race = commands.choices["sweep"], commands.choices["race"]
    sweep.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES),
                       metavar="NAME", help=f"recipes to train (default all): {', '.join(CANDIDATES)}")
    sweep.add_argument("--seed", type=int, default=0)
    race.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    race.add_argument("--anchor", choices=list(CANDIDATES), default=None, help="the anchor's recipe by name")
    race.add_argument("--sweep-dir", type=Path, default=None, help="take the best recipe of this sweep's runs")
    race.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    race.add_argument("--fit-args", default="", help="extra `pynodeta fit` options, e.g. for a short smoke run")
    args = parser.parse_args()
    if args.from_raw is not None:
        raw = load_raw(args.from_raw)
        print((save_sweep_report if raw["kind"] == "sweep" else save_race_report)(raw))
        return
    if args.command is None:
        parser.error("name a sub-command (sweep or race) or pass --from-raw FILE")
    if args.command == "race" and args.anchor is None and args.sweep_dir is None:
        parser.error("race needs the anchor's recipe: --sweep-dir SWEEP (its best) or --anchor NAME")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print((run_sweep if args.command == "sweep" else run_race)(args))


if __name__ == "__main__":
    main()
