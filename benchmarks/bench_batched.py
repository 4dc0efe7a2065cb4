"""Per-sample step sizes: pynodeta's ``solve(..., batched=True)`` against torchode 1.0.1, in one process.

The workloads of bench_solver.py (its fields and states, its tolerances), with every sample of the batch
solved as its own problem by both libraries (dopri5, the I controller, equal rtol/atol, RMS error norm per
sample). Gradient modes compared like with like:

- "direct": backprop through the solver; torchode's ``AutoDiffAdjoint`` with
  ``backprop_through_step_size_control=False`` (pynodeta never differentiates the step-size control).
- "adjoint": the backsolve adjoint with per-sample backward steps; torchode's ``BacksolveAdjoint``, whose
  backward error norm is given the same seminorm as pynodeta's (the RMS over each sample's t, y and
  dL/dy columns; the per-sample parameter gradients it carries stay out of error control).

Beside them, pynodeta with ``backend_options={"compile": True}`` (the trial step as one compiled graph,
forward and direct rows) and, on forward rows, func alone: the field's calls of one pynodeta solve made
back to back, the limit a solve approaches when the solver costs nothing. torchode's own JIT route
(``torch.jit.script`` of the solver) fails inside TorchScript with torch 2.13, so torchode runs eagerly.

All contenders run alternately (the order rotating) so that they see the same machine load.

    python3 benchmarks/bench_batched.py                    # all workloads
    python3 benchmarks/bench_batched.py --repeats 3 --workloads "a: MLP forward"

The table is saved as a report (benchmarks/results/bench_batched.json, rendered into docs/results.md) and
the raw measurements to benchmarks/results/raw/bench_batched.json; ``--from-raw FILE`` rebuilds the report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import pynodeta as pn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solver import ConvField, Counting, MLPField  # noqa: E402

from reporting import (  # noqa: E402
    Table,
    add_timing_arguments,
    device_record,
    device_report,
    load_raw,
    raw_machine,
    rebuilt_from_raw,
    save_raw,
    save_report,
    synchronize,
)


class PerSampleMLP(MLPField):
    """bench_solver's MLP field, taking per-sample times t: (batch,)."""

    def forward(self, t, y):
        return self.net(torch.cat([y, t.reshape(-1, 1).expand(y.shape[0], 1)], dim=1))


@dataclass
class Workload:
    name: str
    field: torch.nn.Module
    y0: torch.Tensor
    t: torch.Tensor  # (batch, n): each sample's own output times
    rtol: float
    atol: float
    mode: str  # "forward", "direct", "adjoint"


def workloads(device: str = "cpu") -> list[Workload]:
    """bench_solver's workloads; the output times differ per sample (spans 0..5 stretched by up to 20 %)."""
    torch.manual_seed(1)
    mlp, y_mlp = PerSampleMLP().to(device), torch.randn(256, 2).to(device)
    conv, y_conv = ConvField().to(device), torch.randn(32, 64, 8, 8).to(device)
    stretch = torch.linspace(0.8, 1.0, 256)[:, None]
    t_mlp = (torch.tensor([0.0, 5.0]) * stretch).to(device)
    t_conv = (torch.tensor([0.0, 1.0]) * torch.linspace(0.8, 1.0, 32)[:, None]).to(device)
    return [
        Workload("a: MLP forward (no grad)", mlp, y_mlp, t_mlp, 1e-5, 1e-7, "forward"),
        Workload("a: MLP fwd+bwd direct", mlp, y_mlp, t_mlp, 1e-5, 1e-7, "direct"),
        Workload("a: MLP fwd+bwd adjoint", mlp, y_mlp, t_mlp, 1e-5, 1e-7, "adjoint"),
        Workload("b: conv fwd+bwd adjoint", conv, y_conv, t_conv, 1e-3, 1e-3, "adjoint"),
    ]


class _Flat(torch.nn.Module):
    """The field on torchode's flat (batch, features) states; BacksolveAdjoint's backward vmaps over samples,
    so there it sees one unbatched sample."""

    def __init__(self, field: torch.nn.Module, shape: torch.Size):
        super().__init__()
        self.field, self.shape = field, shape

    def forward(self, t, y):
        if y.ndim == 1:
            return self.field(t.reshape(1), y.view(1, *self.shape[1:])).reshape(-1)
        return self.field(t, y.view(self.shape)).reshape(self.shape[0], -1)


def _torchode():
    """torchode, imported only when measuring: rebuilding the report from raw data needs no benchmark extras."""
    try:
        import torchode
    except ImportError as error:
        raise SystemExit("bench_batched.py measures against torchode 1.0.1: pip install -e '.[bench]'") from error
    return torchode


def _torchode_solver(w: Workload, counting: Counting):
    """torchode's term (flat states, as it requires) and solver for the workload's gradient mode."""
    torchode = _torchode()
    shape = w.y0.shape
    term = torchode.ODETerm(_Flat(counting, shape))
    method = torchode.Dopri5(term=term)
    controller = torchode.IntegralController(atol=w.atol, rtol=w.rtol, term=term)
    if w.mode != "adjoint":
        return torchode.AutoDiffAdjoint(method, controller, backprop_through_step_size_control=False)
    solver = torchode.BacksolveAdjoint(term, method, controller)
    n = shape[1:].numel()
    seminorm = torchode.IntegralController(atol=w.atol, rtol=w.rtol, term=term,
                                           norm=lambda x: x[:, : 1 + 2 * n].square().mean(dim=1).sqrt())
    solver.backward_adjoint.step_size_controller = seminorm
    return solver


def run_once(library: str, w: Workload, counting: Counting, solver) -> dict:
    """One solve (and backward): seconds, calls of func forward/backward, mean per-sample trial steps.
    ``library``: "torchode", "pynodeta" or "pynodeta+compile"."""
    y0 = w.y0.clone().requires_grad_(w.mode != "forward")
    counting.reset()
    grad = torch.no_grad() if w.mode == "forward" else torch.enable_grad()
    torchode = _torchode() if library == "torchode" else None
    synchronize(y0.device)
    start = time.perf_counter()
    with grad:
        if library.startswith("pynodeta"):
            compiled = library == "pynodeta+compile"
            # the compiled step traces func into its graph: it gets the field itself, since the counting
            # wrapper's clock reads and tallies would split the graph (its calls come from the statistics)
            sol = pn.solve(w.field if compiled else counting, y0, w.t,
                           controller=pn.IController(rtol=w.rtol, atol=w.atol), batched=True,
                           adjoint=w.mode == "adjoint", backend_options={"compile": True} if compiled else None)
            ys, steps = sol.ys, sol.stats.n_steps_per_sample
            if compiled:
                counting.tally[0] += sol.stats.nfe
        else:
            problem = torchode.InitialValueProblem(y0=y0.reshape(y0.shape[0], -1), t_eval=w.t)
            sol = solver.solve(problem)
            ys, steps = sol.ys, sol.stats["n_steps"]
        forward_calls = counting.calls
        if w.mode != "forward":
            ys[:, -1].square().sum().backward()
    synchronize(y0.device)
    elapsed = time.perf_counter() - start
    return dict(seconds=elapsed, calls=(forward_calls, counting.calls - forward_calls),
                steps=float(steps.float().mean()), in_func=counting.seconds)



class FuncAlone:
    """func's inputs in one pynodeta solve, to time its calls alone, back to back."""

    def __init__(self, w: Workload):
        self.field, self.inputs = w.field, []

        def recording(t, y):
            self.inputs.append((t.clone(), y.clone()))
            return w.field(t, y)

        with torch.no_grad():
            pn.solve(recording, w.y0, w.t, controller=pn.IController(rtol=w.rtol, atol=w.atol), batched=True)

    @torch.no_grad()
    def seconds(self) -> float:
        synchronize(self.inputs[0][1].device)
        start = time.perf_counter()
        for t, y in self.inputs:
            self.field(t, y)
        synchronize(self.inputs[0][1].device)
        return time.perf_counter() - start


def measure(w: Workload, repeats: int, compiled: bool = True) -> dict:
    libraries = ("torchode", "pynodeta", *(("pynodeta+compile",) if compiled and w.mode != "adjoint" else ()))
    counting = {library: Counting(w.field) for library in libraries}
    solver = _torchode_solver(w, counting["torchode"])
    first_compiled = None
    for library in libraries:  # warm-up; the compiled step compiles here
        start = time.perf_counter()
        run_once(library, w, counting[library], solver)
        if library == "pynodeta+compile":
            first_compiled = time.perf_counter() - start
    func_alone = FuncAlone(w) if w.mode == "forward" else None
    contenders = (*libraries, "func alone") if func_alone else libraries
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        shift = repeat % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            if name == "func alone":
                runs[name].append(dict(seconds=func_alone.seconds()))
            else:
                runs[name].append(run_once(name, w, counting[name], solver))
    row = dict(workload=w.name)
    if func_alone:
        row["median_s_func_alone"] = statistics.median(r["seconds"] for r in runs["func alone"])
        row["func_alone_calls"] = len(func_alone.inputs)
    if "pynodeta+compile" in libraries:
        compiled_runs = runs["pynodeta+compile"]
        row["median_s_pynodeta_compiled"] = statistics.median(r["seconds"] for r in compiled_runs)
        row["calls_pynodeta_compiled"] = compiled_runs[-1]["calls"]
        row["first_solve_s_pynodeta_compiled"] = first_compiled
        libraries = libraries[:2]
    for library in libraries:
        row[f"median_s_{library}"] = statistics.median(r["seconds"] for r in runs[library])
        row[f"calls_{library}"] = runs[library][-1]["calls"]
        row[f"steps_{library}"] = runs[library][-1]["steps"]
        # on a GPU the time around a func call is its launch time only: the split is not measured there
        row[f"in_func_{library}"] = (statistics.median(r["in_func"] / r["seconds"] for r in runs[library])
                                     if w.y0.device.type == "cpu" else None)
    row["ratio"] = row["median_s_pynodeta"] / row["median_s_torchode"]
    return row


def _calls(pair) -> str:
    return f"{pair[0]} / {pair[1] or '–'}"


def _floor_note(row: dict) -> str:
    """How far the forward ratio can go when func's own time is the floor (both call it on the whole batch)."""
    floor = row["in_func_pynodeta"] * row["ratio"]
    overhead_p = (1 - row["in_func_pynodeta"]) * row["ratio"]
    overhead_t = 1 - row["in_func_torchode"]
    return (f"{row['workload']}: pynodeta's calls of func alone take {floor:.2f}x torchode's total time (the "
            f"ratio it cannot go below while func runs on the whole batch), and its time outside func is "
            f"{overhead_p:.2f}x torchode's total against torchode's own {overhead_t:.2f}x: pynodeta cuts the "
            f"solver overhead to {overhead_p / overhead_t:.0%} of torchode's.")


def _inside(row: dict) -> str:
    if row["in_func_torchode"] is None:
        return "–"
    return f"{row['in_func_torchode']:.0%} / {row['in_func_pynodeta']:.0%}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.4g}"


def _over(numerator: float | None, denominator: float | None) -> str:
    return "–" if numerator is None or denominator is None else f"{numerator / denominator:.3f}"


def save_batched_report(raw: dict) -> Path:
    # runs measured before the compiled step existed have neither of its columns
    with_compiled = any("median_s_func_alone" in r for r in raw["rows"])
    rows = []
    for r in raw["rows"]:
        row = [r["workload"], _calls(r["calls_torchode"]), _calls(r["calls_pynodeta"]), r["steps_torchode"],
               r["steps_pynodeta"], r["median_s_torchode"] * 1e3, r["median_s_pynodeta"] * 1e3, r["ratio"], _inside(r)]
        if with_compiled:
            compiled, alone = r.get("median_s_pynodeta_compiled"), r.get("median_s_func_alone")
            row += [_ms(compiled), _over(compiled, r["median_s_torchode"]), _ms(alone),
                    _over(r["median_s_pynodeta"], alone), _over(compiled, alone)]
        rows.append(row)
    columns = ["workload", "func calls fwd / bwd (torchode)", "func calls fwd / bwd (pynodeta)",
               "mean steps per sample, fwd (torchode)", "mean steps per sample, fwd (pynodeta)", "torchode ms",
               "pynodeta ms", "pynodeta / torchode", "time inside func calls (torchode / pynodeta)"]
    if with_compiled:
        columns += ["pynodeta, compiled step ms", "compiled step / torchode", "func alone ms", "pynodeta / func alone",
                    "compiled step / func alone"]
    table = Table(columns, rows, f"median wall time of {raw['repeats']} alternated runs, {raw['threads']} thread(s)")
    notes = [
        "Both libraries solve every sample as its own problem (dopri5, I controller, equal rtol/atol, RMS norm "
        "per sample) and call func on the whole batch at each stage, so 'func calls' is the cost driver; "
        "'mean steps per sample' counts each sample's trial steps while it is running.",
        "direct = backprop through the solver (torchode: AutoDiffAdjoint without backprop through the step-size "
        "control, as pynodeta). adjoint = backsolve adjoint with per-sample backward steps (torchode: "
        "BacksolveAdjoint, its backward norm restricted to the t, y, dL/dy columns to match pynodeta's "
        "seminorm; torchode carries per-sample parameter gradients through vmap, pynodeta sums them over the "
        "batch with one weighted vector-Jacobian product per step, keeping the graph of each start point's "
        "evaluation until its samples move on).",
        "The libraries run alternately in one process, so both see the same machine load: the ratio is the "
        "figure to read.",
    ]
    if with_compiled:
        notes.append("compiled step: pynodeta with backend_options={'compile': True} (forward and direct rows; its "
                     "first solve, which compiles, is left out of the median). func alone: the field's calls of "
                     "one pynodeta solve made back to back without the solver (forward rows). torchode runs "
                     "eagerly: its JIT route, torch.jit.script of the solver, fails inside TorchScript with "
                     "torch 2.13.")
    if raw.get("note"):
        notes.append(raw["note"])
    notes += [_floor_note(r) for r in raw["rows"]
              if r["workload"].startswith("a: MLP forward") and r["in_func_torchode"] is not None]
    name, title = device_report("bench_batched", "Per-sample step sizes: pynodeta batched=True against torchode 1.0.1",
                                raw)
    if raw.get("device", "cpu") != "cpu":
        notes.append("Every timed run ends with a device synchronisation; the time inside func is not measured "
                     "on a GPU (around a call it is the launch time only).")
    return save_report(name, title, [table], notes=notes, command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=7)
    args = parser.parse_args(argv)
    if rebuilt_from_raw(args, save_batched_report):
        return
    torch.set_num_threads(args.threads)
    torchode = _torchode()
    print(f"torch {torch.__version__}, torchode {torchode.__version__}, {args.threads} thread(s), "
          f"median of {args.repeats}\n")
    rows = []
    for w in workloads(args.device):
        if args.workloads and not any(s in w.name for s in args.workloads):
            continue
        row = measure(w, args.repeats)
        print(row, flush=True)
        rows.append(row)
    device = device_record(args.device)
    raw = save_raw(device_report("bench_batched", "", device)[0],
                   dict(torch=torch.__version__, torchode=torchode.__version__, threads=args.threads,
                        repeats=args.repeats, rows=rows, note=args.note, **device))
    print(save_batched_report(load_raw(raw)))


if __name__ == "__main__":
    main()
