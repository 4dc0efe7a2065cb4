"""The adaptive step replayed as a CUDA graph (``backend_options={"cuda_graph": True}``) against the eager step,
func alone and torchdiffeq 0.2.5, on bench_solver's workloads that solve forward without gradient, on a GPU.

Contenders, alternated in one process (the order rotates from round to round), each run ending with a
device synchronisation:
  torchdiffeq            torchdiffeq.odeint / odeint_adjoint(field), as its users run it
  pynodeta               pynodeta.odeint / odeint_adjoint(field): the eager step, the default
  pynodeta+cuda_graph    the same with options={"cuda_graph": True} (the adjoint's forward solve replayed)
  func alone             field's recorded calls of one forward solve, back to back (forward workloads)

The graph is captured in every solve, so its cost is inside every graphed time. To say at which solve
length it pays, the forward workloads are also solved over the first quarter of their time span: with the
steps of the two lengths, each solve is split into a cost per step and a fixed cost per solve, and the
capture's fixed cost over the per-step saving is the number of steps a solve needs to gain.

    python3 benchmarks/graphed_step.py --device cuda --repeats 21
    python3 benchmarks/graphed_step.py --device cpu --stand-in --repeats 2   # a self-check of the script

``--stand-in`` replays with ``RerunCapture`` (the CPU stand-in of the tests) and writes into a temporary
folder unless ``--results-dir`` is given: it runs every path of the script, it measures nothing. The report
goes to benchmarks/results/graphed_step_cuda.json (rendered into docs/results.md), the raw record to
results/raw/; ``--from-raw FILE`` rebuilds the report.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torchdiffeq

import pynodeta as pn
from pynodeta.ode.backends import graphed_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solver import Replay, Workload, workloads  # noqa: E402

from reporting import (  # noqa: E402
    RESULTS_DIR,
    Table,
    add_timing_arguments,
    device_record,
    rebuilt_from_raw,
    save_device_report,
    save_device_run,
    timed_on,
)

CONTENDERS = ("torchdiffeq", "pynodeta", "pynodeta+cuda_graph")
GRAPHABLE = ("forward", "adjoint", "adjoint-seminorm")  # modes whose forward solve runs without gradient


def solver(w: Workload, library: str, graphed: bool = False, span: float = 1.0):
    """solve(func) -> (forward NFE, steps) of the workload: forward without gradient, or forward and the
    adjoint's backward; ``span``: the fraction of the time span solved."""
    t = torch.stack([w.t[0], w.t[0] + span * (w.t[-1] - w.t[0])]) if span != 1.0 else w.t
    options = {"cuda_graph": True} if graphed else None
    odeint = pn.odeint if library == "pynodeta" else torchdiffeq.odeint
    odeint_adjoint = pn.odeint_adjoint if library == "pynodeta" else torchdiffeq.odeint_adjoint

    def solve(func) -> tuple[int | None, int | None]:
        with pn.record_stats() as records:
            if w.mode == "forward":
                with torch.no_grad():
                    odeint(func, w.y0, t, rtol=w.rtol, atol=w.atol, options=options)
            else:
                y0 = w.y0.clone().requires_grad_(True)
                adjoint_options = {"norm": "seminorm"} if w.mode == "adjoint-seminorm" else None
                ys = odeint_adjoint(func, y0, t, rtol=w.rtol, atol=w.atol, options=options,
                                    adjoint_options=adjoint_options)
                ys[-1].square().sum().backward()
        if library != "pynodeta":
            return None, None
        return records[0].nfe, records[0].n_steps

    return solve


def measure(w: Workload, repeats: int) -> dict:
    device = w.y0.device
    runs = {name: solver(w, name.split("+")[0], graphed=name.endswith("cuda_graph")) for name in CONTENDERS}
    counts = {name: runs[name](w.field) for name in CONTENDERS[1:]}  # (NFE, steps); also the warm-up
    nfe = {name: counts[name][0] for name in counts}
    runs["torchdiffeq"](w.field)
    names = list(CONTENDERS)
    short, steps = {}, {}
    if w.mode == "forward":
        replay = Replay(w.field, runs["pynodeta"])
        for name in CONTENDERS[1:]:
            short[name] = solver(w, "pynodeta", graphed=name.endswith("cuda_graph"), span=0.25)
            steps[name] = (counts[name][1], short[name](w.field)[1])
        names += ["func alone", *(f"{name}, quarter span" for name in short)]
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            if name == "func alone":
                times[name].append(replay.time_func_alone())
            elif name.endswith("quarter span"):
                times[name].append(timed_on(device, functools.partial(short[name.split(",")[0]], w.field)))
            else:
                times[name].append(timed_on(device, functools.partial(runs[name], w.field)))
    return dict(workload=w.name, mode=w.mode, nfe=nfe, steps=steps,
                median_s={name: statistics.median(values) for name, values in times.items()})


def payback(row: dict) -> tuple[float, float, str]:
    """(per-step saving ms, the capture's fixed cost ms, steps to pay back) from the two solve lengths."""
    cost = {}
    for name in CONTENDERS[1:]:
        (n_full, n_short), m = row["steps"][name], row["median_s"]
        per_step = (m[name] - m[f"{name}, quarter span"]) / (n_full - n_short)
        cost[name] = (per_step, m[name] - per_step * n_full)
    (eager_step, eager_fixed), (graph_step, graph_fixed) = cost["pynodeta"], cost["pynodeta+cuda_graph"]
    saving, capture = eager_step - graph_step, graph_fixed - eager_fixed
    steps = f"{max(capture, 0.0) / saving:,.0f}" if saving > 0 else "never"
    return saving * 1e3, capture * 1e3, steps


def save_graphed_step_report(raw: dict, directory: Path = RESULTS_DIR) -> Path:
    rows = []
    for r in raw["rows"]:
        m = r["median_s"]
        forward = r["mode"] == "forward"
        saving, capture, steps = payback(r) if forward else ("", "", "")  # the adjoint rows: no split, no func alone
        rows.append([r["workload"], f"{r['nfe']['pynodeta']} / {r['nfe']['pynodeta+cuda_graph']}",
                     *(m[name] * 1e3 for name in CONTENDERS), m["func alone"] * 1e3 if forward else "",
                     m["pynodeta+cuda_graph"] / m["pynodeta"], m["pynodeta+cuda_graph"] / m["torchdiffeq"],
                     m["pynodeta+cuda_graph"] / m["func alone"] if forward else "", saving, capture, steps])
    table = Table(["workload", "NFE (eager / graphed)", *(f"{name} ms" for name in CONTENDERS), "func alone ms",
                   "graphed / eager", "graphed / torchdiffeq", "graphed / func alone", "saving per step ms",
                   "capture ms", "steps to pay back"], rows,
                  f"median wall time of {raw['repeats']} rotated rounds, each ending with a device synchronisation")
    notes = [
        "All contenders run in one process, their order rotating from round to round, so they see the same load.",
        "torchdiffeq is torchdiffeq 0.2.5 as its users run it (odeint, or odeint_adjoint with "
        "adjoint_options={'norm': 'seminorm'} for the seminorm row). pynodeta+cuda_graph is pynodeta's odeint "
        "with options={'cuda_graph': True}: the trial step captured once per solve (its capture is inside every "
        "time) and replayed; the adjoint's backward solve stays eager.",
        "func alone: the field's calls recorded in one pynodeta solve, made back to back without gradient.",
        "Saving per step and capture: each forward solve, timed over its whole span and over its first quarter, "
        "split into a cost per step and a fixed cost; capture is the graphed solve's fixed cost above the eager "
        "one's, steps to pay back is capture / saving per step.",
    ]
    if raw.get("stand_in"):
        notes.insert(0, "A self-check with the CPU stand-in for a graph (--stand-in): these times measure nothing.")
    return save_device_report("graphed_step", "The adaptive step replayed as a CUDA graph against the eager one, "
                              "func alone and torchdiffeq", [table], notes, raw, directory)


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=21)
    parser.add_argument("--stand-in", action="store_true", help="replay with the CPU stand-in: a self-check")
    parser.add_argument("--results-dir", type=Path, default=None, help="where the report and raw/ go")
    args = parser.parse_args(argv)
    if rebuilt_from_raw(args, lambda raw: save_graphed_step_report(raw, args.results_dir or RESULTS_DIR)):
        return None
    if args.stand_in != (args.device == "cpu"):
        raise SystemExit("CUDA graphs need --device cuda; on a CPU only --stand-in runs (a self-check)")
    if args.stand_in:
        graphed_step.graph_capture = lambda device: graphed_step.RerunCapture()
    torch.set_num_threads(args.threads)
    rows = []
    for w in workloads(args.device):
        if w.mode not in GRAPHABLE or args.workloads and not any(s in w.name for s in args.workloads):
            continue
        rows.append(measure(w, args.repeats))
        print(rows[-1], flush=True)
    directory = args.results_dir or (Path(tempfile.mkdtemp(prefix="graphed_step_")) if args.stand_in
                                     else RESULTS_DIR)
    record = dict(torch=torch.__version__, repeats=args.repeats, rows=rows, stand_in=args.stand_in, note=args.note,
                  **device_record(args.device))
    return save_device_run("graphed_step", record, directory, save_graphed_step_report)


if __name__ == "__main__":
    main()
