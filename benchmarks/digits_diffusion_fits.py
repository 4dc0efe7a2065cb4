"""The three shipped digits diffusion configs, each run as a user runs it: ``pynodeta fit --config NAME``.

Every config trains for the same wall time (its ``max_time``) and then evaluates; this script runs them
one after the other in fresh processes and tabulates the summary each run wrote: FD over the real-data
floor, NLL in bits/dim, the sampler and its NFE, training steps and the whole run's wall time.

    python benchmarks/digits_diffusion_fits.py                       # digits_ddpm, digits_edm, digits_edm2
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

CONFIGS = ("digits_ddpm", "digits_edm", "digits_edm2")


def training_steps(run_root: Path) -> int:
    """The last optimiser step the CSV logger saw (its ``step`` column counts from 0)."""
    steps = [int(row["step"]) for path in run_root.rglob("metrics.csv")
             for row in csv.DictReader(path.open()) if row.get("step")]
    if not steps:
        raise RuntimeError(f"no metrics.csv with a step column under {run_root}")
    return max(steps) + 1


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
    line = next(line for line in finished.stdout.splitlines() if line.startswith("pynodeta summary:"))
    line = line.replace(str(save_dir), name)  # the run folder was temporary: keep no machine path in the record
    return {"config": name, "wall_s": wall, "steps": training_steps(save_dir), "summary_line": line,
            **{key: summary[key] for key in ("fd", "fd_floor", "fd_ratio", "bpd", "sampler", "sampler_nfe")}}


def save_fits_report(raw: dict) -> Path:
    rows = [[r["config"], r["steps"], round(r["fd_ratio"], 2), round(r["bpd"], 3),
             f"{r['sampler']} ({r['sampler_nfe']:.0f} NFE)", round(r["wall_s"] / 60, 1)] for r in raw["runs"]]
    table = Table(["config", "training steps", "FD / floor", "NLL (bits/dim)", "sampler", "whole run (min)"],
                  rows, caption="each config trains for the same wall time (7 minutes, its max_time), one thread, "
                                "then evaluates 360 samples and the NLL of 32 test images")
    notes = [raw.get("machine_note", ""), "FD in the digits feature space (pynodeta.metrics), floor = train vs "
             "test features; NLL by the probability-flow ODE (dopri5) with uniform dequantisation."]
    for r in raw["runs"]:  # DDPM runs also print the variational bound in their summary line
        vlb = next((part.strip() for part in r["summary_line"].split("|") if part.strip().startswith("VLB")), None)
        if vlb:
            notes.append(f"{r['config']}'s summary also gives the DDPM variational bound: {vlb}.")
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
