"""The compiled adaptive step (``backend_options={"compile": True}``) against the eager one, func alone and
torchdiffeq 0.2.5, on bench_solver's workloads, in one process.

Six things are timed alternately on the same workload (the order rotates from round to round):
  torchdiffeq           torchdiffeq.odeint(field)                 as its users run it
  torchdiffeq+compile   torchdiffeq.odeint(torch.compile(field))  as its users who compile their model run it
  pynodeta              pynodeta.odeint(field)                    the eager step, the default
  pynodeta+compile      pynodeta.solve(field, backend_options={"compile": True})
  func alone            field's recorded calls of one solve, back to back (eager)
  func alone, compiled  the same calls of torch.compile(field)
and, once each in a fresh compile cache, the first solve of each compiled contender (its compile time, cold);
then, in a new process that finds that cache on disk, as a user's second run does, the first compiled step's
solve again (warm). Payback: the number of solves after which the compiled step's saving has repaid its
compile time, cold and warm.

    python benchmarks/compiled_step.py --repeats 21
    python benchmarks/compiled_step.py --from-raw benchmarks/results/raw/compiled_step.json

The report (benchmarks/results/compiled_step.json) is rendered into docs/results.md.
"""

from __future__ import annotations

import os
import tempfile

# a fresh inductor cache, so that the first solve's time is a cold compile, as on a new machine
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-cache-"))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torchdiffeq  # noqa: E402

import pynodeta as pn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solver import Workload, workloads  # noqa: E402

from reporting import (  # noqa: E402
    Table,
    add_timing_arguments,
    load_raw,
    raw_machine,
    rebuilt_from_raw,
    save_raw,
    save_report,
)

CONTENDERS = ("torchdiffeq", "torchdiffeq+compile", "pynodeta", "pynodeta+compile", "func alone",
              "func alone, compiled")


def _forward(w: Workload):
    """solve(func, compile_step) for the workload: the contenders without gradient, or with backward."""

    def solve(func, library: str, compile_step: bool = False) -> int:
        y0 = w.y0.clone().requires_grad_(w.mode == "direct")
        with torch.set_grad_enabled(w.mode == "direct"):
            if library == "torchdiffeq":
                ys = torchdiffeq.odeint(func, y0, w.t, rtol=w.rtol, atol=w.atol)
                nfe = None
            else:
                options = {"compile": True} if compile_step else None
                solution = pn.solve(func, y0, w.t, controller=pn.IController(rtol=w.rtol, atol=w.atol),
                                    backend_options=options)
                ys, nfe = solution.ys, solution.stats.nfe
            if w.mode == "direct":
                ys[-1].square().sum().backward()
        return nfe

    return solve


class Recorded:
    """func's inputs in one solve, to call func alone on them back to back."""

    def __init__(self, field, solve):
        self.inputs = []

        def recording(t, y):
            self.inputs.append((t.clone(), y.detach().clone()))
            return field(t, y)

        solve(recording, "pynodeta")

    def time(self, func, backward: bool) -> float:
        start = time.perf_counter()
        for t, y in self.inputs:
            if backward:
                y = y.requires_grad_(True)
                out = func(t, y)
                torch.autograd.grad(out, (y, *func.parameters()), torch.ones_like(out))
            else:
                with torch.no_grad():
                    func(t, y)
        return time.perf_counter() - start


def measure(w: Workload, repeats: int) -> dict:
    solve = _forward(w)
    compiled_field = torch.compile(w.field)
    first = {}
    start = time.perf_counter()
    nfe_compiled = solve(w.field, "pynodeta", compile_step=True)
    first["pynodeta+compile"] = time.perf_counter() - start
    start = time.perf_counter()
    solve(compiled_field, "torchdiffeq")
    first["torchdiffeq+compile"] = time.perf_counter() - start
    recorded = Recorded(w.field, solve)
    backward = w.mode == "direct"
    runs = {
        "torchdiffeq": lambda: solve(w.field, "torchdiffeq"),
        "torchdiffeq+compile": lambda: solve(compiled_field, "torchdiffeq"),
        "pynodeta": lambda: solve(w.field, "pynodeta"),
        "pynodeta+compile": lambda: solve(w.field, "pynodeta", compile_step=True),
        "func alone": lambda: recorded.time(w.field, backward),
        "func alone, compiled": lambda: recorded.time(compiled_field, backward),
    }
    nfe_eager = runs["pynodeta"]()
    for run in runs.values():  # warm-up (the compiled field's backward compiles here)
        run()
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for repeat in range(repeats):
        shift = repeat % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            start = time.perf_counter()
            elapsed = runs[name]()
            wall = time.perf_counter() - start
            times[name].append(elapsed if name.startswith("func alone") else wall)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return dict(workload=w.name, nfe_eager=nfe_eager, nfe_compiled=nfe_compiled, func_calls=len(recorded.inputs),
                median_s=medians, first_solve_s=first)


WARM_SOLVES = 5  # compiled solves the warm child times after its first, for its own median


def measure_warm_start(w: Workload) -> dict:
    """In a process that finds the inductor cache a first run filled: the first compiled-step solve, and the
    median of the next few, so that their difference is what a second run on the machine pays to compile."""
    solve = _forward(w)
    start = time.perf_counter()
    solve(w.field, "pynodeta", compile_step=True)
    first = time.perf_counter() - start
    later = []
    for _ in range(WARM_SOLVES):
        start = time.perf_counter()
        solve(w.field, "pynodeta", compile_step=True)
        later.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": statistics.median(later)}


def warm_start_in_child(workload: str, threads: int) -> dict:
    """measure_warm_start in a fresh process with this one's inductor cache (set above, inherited)."""
    command = [sys.executable, __file__, "--warm-start", workload, "--threads", str(threads)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def payback(compile_s: float, saving: float) -> str:
    return f"{compile_s / saving:,.0f}" if saving > 0 else "never"


def save_compiled_step_report(raw: dict) -> Path:
    rows = []
    for r in raw["rows"]:
        m, first, warm = r["median_s"], r["first_solve_s"], r.get("warm_start")  # none in records before it
        saving = m["pynodeta"] - m["pynodeta+compile"]
        cold_s = first["pynodeta+compile"] - m["pynodeta+compile"]
        warm_s = warm["first_s"] - warm["median_s"] if warm else None
        warm_cells = (f"{warm_s:.1f}", payback(warm_s, saving)) if warm else ("not measured", "not measured")
        rows.append([r["workload"], f"{r['nfe_eager']} / {r['nfe_compiled']}",
                     *(m[name] * 1e3 for name in CONTENDERS),
                     m["pynodeta+compile"] / m["func alone"], m["pynodeta+compile"] / m["func alone, compiled"],
                     m["pynodeta"] / m["func alone"],
                     m["pynodeta+compile"] / m["torchdiffeq+compile"], m["pynodeta+compile"] / m["torchdiffeq"],
                     f"{cold_s:.1f} / {warm_cells[0]}", f"{payback(cold_s, saving)} / {warm_cells[1]}"])
    table = Table(["workload", "NFE (eager / compiled step)", *(f"{name} ms" for name in CONTENDERS),
                   "compiled step / func alone", "compiled step / compiled func alone", "eager step / func alone",
                   "compiled step / torchdiffeq+compile", "compiled step / torchdiffeq", "compile s, cold / warm",
                   "solves to pay back, cold / warm"], rows,
                  f"median wall time of {raw['repeats']} rotated rounds, {raw['threads']} thread(s)")
    notes = [
        "All six run in one process, their order rotating from round to round, so they see the same load.",
        "torchdiffeq+compile is torchdiffeq 0.2.5 solving with torch.compile(field): what a torchdiffeq user who "
        "compiles the model gets (the solver's own ops stay eager). pynodeta+compile compiles the whole trial "
        "step, func's calls included: backend_options={'compile': True}.",
        "func alone: the field's calls recorded in one pynodeta solve, made back to back (with their "
        "vector-Jacobian products for the fwd+bwd row), eager and compiled: the limit a solve approaches when "
        "the solver costs nothing.",
        "compile s, cold: the first compiled solve in a fresh inductor cache minus the median compiled solve; "
        "warm: the same in a new process that finds the cache the first one left on disk (a second run on the "
        f"machine), minus the median of its next {WARM_SOLVES} compiled solves. Solves to pay back: compile s / "
        "(eager solve - compiled solve).",
    ]
    if raw.get("note"):
        notes.append(raw["note"])
    return save_report("compiled_step", "The compiled adaptive step against the eager one, func alone and "
                       "torchdiffeq", [table], notes=notes, command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=21)
    parser.add_argument("--warm-start", metavar="WORKLOAD", help=argparse.SUPPRESS)  # the child of warm_start_in_child
    args = parser.parse_args(argv)
    if rebuilt_from_raw(args, save_compiled_step_report):
        return
    if args.device != "cpu":
        raise SystemExit("compiled_step.py measures the CPU step; --device cuda is not supported")
    torch.set_num_threads(args.threads)
    if args.warm_start:
        print(json.dumps(measure_warm_start(next(w for w in workloads("cpu") if w.name == args.warm_start))))
        return
    rows = []
    for w in workloads("cpu"):
        if w.mode not in ("forward", "direct") or args.workloads and not any(s in w.name for s in args.workloads):
            continue
        rows.append(measure(w, args.repeats))
        rows[-1]["warm_start"] = warm_start_in_child(w.name, args.threads)
        print(rows[-1])
    raw = save_raw("compiled_step", dict(torch=torch.__version__, threads=args.threads, repeats=args.repeats,
                                         rows=rows, note=args.note))
    print(save_compiled_step_report(load_raw(raw)))


if __name__ == "__main__":
    main()
