"""The shipped digits diffusion configs, each run as a user runs it: ``pynodeta fit --config NAME``.

Each config trains until its own limit (``max_time`` or ``max_epochs``) and then evaluates; this script runs
them one after the other in fresh processes and tabulates the summary each run wrote: FD over the real-data
floor, NLL in bits/dim, the sampler and its NFE, training steps and the whole run's wall time. What each run
was asked to do (its training limit, threads, evaluation sizes) is read back from the config.yaml the run
saved, and every thread-count change its AdaptiveThreads callback printed is kept, so the table's caption
describes the runs it holds, not the configs of another day.

    python benchmarks/digits_diffusion_fits.py                 # digits_ddpm, digits_edm, digits_edm2, digits_edm2_cond
    python benchmarks/digits_diffusion_fits.py --configs digits_edm2
Saves the report benchmarks/results/digits_diffusion_fits.json (rendered into docs/results.md) and the raw
record to benchmarks/results/raw/; ``--from-raw FILE`` rebuilds the report from such a file.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import (  # noqa: E402
    Table,
    add_from_raw,
    load_raw,
    raw_machine,
    rebuilt_from_raw,
    save_raw,
    save_report,
)

CONFIGS = ("digits_ddpm", "digits_edm", "digits_edm2", "digits_edm2_cond")


def training_steps(run_root: Path) -> int:
    """The last optimiser step the CSV logger saw (its ``step`` column counts from 0)."""
    steps = [int(row["step"]) for path in run_root.rglob("metrics.csv")
             for row in csv.DictReader(path.open()) if row.get("step")]
    if not steps:
        raise RuntimeError(f"no metrics.csv with a step column under {run_root}")
    return max(steps) + 1


def asked(config_yaml: Path) -> dict:
    """What the run was configured to do, from the config.yaml it saved beside its metrics."""
    config = yaml.safe_load(config_yaml.read_text())
    trainer, evaluation = config["trainer"], config["model"]["init_args"]["evaluation"]
    callbacks = [c["class_path"] for c in trainer.get("callbacks") or []]
    return {"max_time": trainer.get("max_time"), "max_epochs": trainer.get("max_epochs"),
            "num_threads": config["num_threads"], "adaptive_threads": "pynodeta.train.AdaptiveThreads" in callbacks,
            "num_samples": evaluation["num_samples"], "nll_num_images": evaluation["nll_num_images"]}


def run_config(name: str, workdir: Path) -> dict:
    """``pynodeta fit --config NAME`` in a fresh process; its summary, steps and wall time."""
    save_dir = workdir / name
    command = [sys.executable, "-m", "pynodeta.cli", "fit", "--config", name,
               "--trainer.logger.init_args.save_dir", str(save_dir)]
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-4000:]}")
    summaries = list(save_dir.rglob("summary.json"))
    if len(summaries) != 1:
        raise RuntimeError(f"expected one summary.json under {save_dir}, found {len(summaries)}")
    summary = json.loads(summaries[0].read_text())
    lines = finished.stdout.splitlines()
    line = next(line for line in lines if line.startswith("pynodeta summary:"))
    line = line.replace(str(save_dir), name)  # the run folder was temporary: keep no machine path in the record
    thread_changes = [line for line in lines if line.startswith("pynodeta: ") and "running on" in line]
    run = {"config": name, "wall_s": wall, "steps": training_steps(save_dir), "summary_line": line,
           "thread_changes": thread_changes, **asked(summaries[0].parent / "config.yaml"),
           **{key: summary[key] for key in ("fd", "fd_floor", "fd_ratio", "bpd", "sampler", "sampler_nfe")}}
    if "conditional_accuracy" in summary:
        run.update(conditional_accuracy=summary["conditional_accuracy"], guidance=summary["guidance"])
    return run


def training_limit(run: dict) -> str:
    """'8 min or 1000 epochs': the config's wall-time limit (d:hh:mm:ss) and epoch limit, whichever comes first."""
    limits = []
    if run["max_time"]:
        days, hours, minutes, seconds = (int(part) for part in run["max_time"].split(":"))
        total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
        limits.append(f"{total / 60:g} min" if total % 60 == 0 else f"{total:g} s")
    if run["max_epochs"] is not None and run["max_epochs"] >= 0:
        limits.append(f"{run['max_epochs']} epochs")
    return " or ".join(limits) or "no limit"


def threads(run: dict) -> str:
    """'≤ 2, adaptive (1 change)': the count the config gave and how often AdaptiveThreads changed it."""
    if not run["adaptive_threads"]:
        return str(run["num_threads"])
    changes = len(run["thread_changes"])
    return f"≤ {run['num_threads']}, adaptive ({changes} change{'' if changes == 1 else 's'})"


def save_fits_report(raw: dict) -> Path:
    rows = [[r["config"], training_limit(r), threads(r), r["steps"], round(r["fd_ratio"], 2), r["num_samples"],
             round(r["bpd"], 3), r["nll_num_images"], f"{r['sampler']} ({r['sampler_nfe']:.0f} NFE)",
             round(r["wall_s"] / 60, 1)] for r in raw["runs"]]
    table = Table(["config", "trains for (whichever first)", "threads", "training steps", "FD / floor", "FD samples",
                   "NLL (bits/dim)", "NLL images", "sampler", "whole run (min)"], rows,
                  caption="each config as shipped, run by `pynodeta fit --config NAME` in a fresh process: it trains "
                          "until its own limit, then evaluates; limits, threads and evaluation sizes read back from "
                          "the config.yaml each run saved")
    notes = [raw.get("machine_note", ""), "FD in the digits feature space (pynodeta.metrics), floor = train vs "
             "test features (the same for every run, whatever its number of samples); NLL by the probability-flow "
             "ODE (dopri5) with uniform dequantisation."]
    for r in raw["runs"]:  # DDPM runs also print the variational bound in their summary line
        vlb = next((part.strip() for part in r["summary_line"].split("|") if part.strip().startswith("VLB")), None)
        if vlb:
            notes.append(f"{r['config']}'s summary also gives the DDPM variational bound: {vlb}.")
        if "conditional_accuracy" in r:
            notes.append(f"{r['config']} draws every digit in turn at guidance {r['guidance']:g}; the digits "
                         f"classifier names the digit asked for in {r['conditional_accuracy']:.3f} of its samples.")
        notes.extend(f"{r['config']}: {change.removeprefix('pynodeta: ')}" for change in r["thread_changes"])
    return save_report("digits_diffusion_fits", "The digits diffusion configs at equal wall time",
                       [table], notes=[n for n in notes if n], command=raw["command"], machine=raw_machine(raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--machine-note", default="", help="how the machine was shared during the runs")
    add_from_raw(parser, "training")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_fits_report):
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            runs.append(run_config(name, Path(tmp)))
            print(runs[-1]["summary_line"], f"({runs[-1]['wall_s']:.0f} s, {runs[-1]['steps']} steps)", flush=True)
    raw = {"runs": runs, "machine_note": args.machine_note}
    print(save_fits_report(load_raw(save_raw("digits_diffusion_fits", raw))))


if __name__ == "__main__":
    main()
