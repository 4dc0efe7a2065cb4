"""pynodeta vs torchdiffeq 0.2.5 on the same workloads, in one process.

Prints a markdown table: forward/backward NFE, median wall time, the ratio pynodeta / torchdiffeq and
the solver-overhead fraction (time - time spent evaluating func) / time, where the time inside func
calls is measured and the backward through func's graph is estimated as (evaluations) x (one VJP).
Forward workloads are also split apart: the solve with func replaying its recorded outputs (the solver
alone) and func's recorded calls back to back (func alone).
The two libraries run alternately so that both see the same machine load.

    python benchmarks/bench_solver.py            # all workloads
    python benchmarks/bench_solver.py --repeats 3 --workloads mlp-forward
    python benchmarks/bench_solver.py --device cuda   # the same workloads on a GPU (report bench_solver_cuda)

The table is saved as a report (benchmarks/results/bench_solver.json, rendered into docs/results.md) and
the raw measurements to benchmarks/results/raw/bench_solver.json; ``--from-raw FILE`` rebuilds the report
from such a file without re-running.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchdiffeq

import pynodeta as pn
from pynodeta.nn import ConcatConv2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
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


class MLPField(torch.nn.Module):
    """f(t, y) = MLP([y, t]) 3 -> 64 -> 64 -> 2 with tanh; weights scaled x2.5 so the dynamics are not trivial."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(2.5)

    def forward(self, t, y):
        return self.net(torch.cat([y, t.expand(y.shape[0], 1)], dim=1))


class ConvField(torch.nn.Module):
    """f(t, y) = GroupNorm(ConcatConv(y, t)), 64 channels."""

    def __init__(self, channels: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.conv = ConcatConv2d(channels, channels, 3, padding=1)
        self.norm = torch.nn.GroupNorm(32, channels)

    def forward(self, t, y):
        return self.norm(torch.tanh(self.conv(t, y)))


@dataclass
class Workload:
    name: str
    field: torch.nn.Module
    y0: torch.Tensor
    t: torch.Tensor
    rtol: float
    atol: float
    mode: str  # "forward", "direct", "adjoint", "adjoint-seminorm"


def workloads(device: str = "cpu") -> list[Workload]:
    torch.manual_seed(1)
    mlp, y_mlp, t_mlp = MLPField().to(device), torch.randn(256, 2).to(device), torch.tensor([0.0, 5.0]).to(device)
    conv, y_conv = ConvField().to(device), torch.randn(32, 64, 8, 8).to(device)
    t_conv = torch.tensor([0.0, 1.0]).to(device)
    return [
        Workload("a: MLP forward (no grad)", mlp, y_mlp, t_mlp, 1e-5, 1e-7, "forward"),
        Workload("a: MLP fwd+bwd direct", mlp, y_mlp, t_mlp, 1e-5, 1e-7, "direct"),
        Workload("a: MLP fwd+bwd adjoint seminorm", mlp, y_mlp, t_mlp, 1e-5, 1e-7, "adjoint-seminorm"),
        Workload("b: conv fwd+bwd adjoint", conv, y_conv, t_conv, 1e-3, 1e-3, "adjoint"),
    ]



class Counting(torch.nn.Module):
    """Counts calls of the wrapped field and the wall time spent inside them.

    ``__call__`` is overridden so that the wrapper skips nn.Module's hook dispatch, and the tallies live in
    a list (assigning a module attribute goes through nn.Module.__setattr__): what the wrapper costs itself
    is counted as solver time for both libraries, so it should cost as little as possible.
    """

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.tally = [0, 0.0]  # calls, seconds inside them

    @property
    def calls(self) -> int:
        return self.tally[0]

    @property
    def seconds(self) -> float:
        return self.tally[1]

    def reset(self) -> None:
        self.tally[:] = [0, 0.0]

    def __call__(self, t, y):
        tally = self.tally
        tally[0] += 1
        start = time.perf_counter()
        out = self.field(t, y)
        tally[1] += time.perf_counter() - start
        return out

    forward = __call__


class Replay:
    """Returns the outputs that func gave in a recorded solve, in order: solving again with it takes the
    same steps with a func that costs nothing, which times the solver's own work alone. The recorded inputs
    time func alone: its calls back to back, with nothing of the solver between them."""

    def __init__(self, field, solve):
        self.field, self.inputs, self.outputs, self.next = field, [], [], 0

        def recording(t, y):
            out = field(t, y)
            self.inputs.append((t.clone(), y.clone()))
            self.outputs.append(out)
            return out

        solve(recording)

    def __call__(self, t, y):
        out = self.outputs[self.next]
        self.next += 1
        return out

    def rewind(self) -> None:
        if self.next not in (0, len(self.outputs)):
            raise RuntimeError(f"the replayed solve asked for {self.next} of {len(self.outputs)} recorded "
                               "outputs: it did not take the recorded steps")
        self.next = 0

    @torch.no_grad()
    def time_func_alone(self) -> float:
        """Seconds of func's recorded calls made back to back."""
        device = self.outputs[0].device
        synchronize(device)
        start = time.perf_counter()
        for t, y in self.inputs:
            self.field(t, y)
        synchronize(device)
        return time.perf_counter() - start


ODEINT = {"pynodeta": pn.odeint, "torchdiffeq": torchdiffeq.odeint}
ODEINT_ADJOINT = {"pynodeta": pn.odeint_adjoint, "torchdiffeq": torchdiffeq.odeint_adjoint}


def run_once(library: str, w: Workload, counting: Counting) -> tuple[float, int, int, float]:
    """One solve (and backward): (seconds, forward NFE, backward NFE, seconds spent inside func)."""
    odeint, odeint_adjoint = ODEINT[library], ODEINT_ADJOINT[library]
    y0 = w.y0.clone().requires_grad_(w.mode != "forward")
    counting.reset()
    synchronize(y0.device)
    start = time.perf_counter()
    if w.mode == "forward":
        with torch.no_grad():
            odeint(counting, y0, w.t, rtol=w.rtol, atol=w.atol)
        synchronize(y0.device)
        return time.perf_counter() - start, counting.calls, 0, counting.seconds
    if w.mode == "direct":
        ys = odeint(counting, y0, w.t, rtol=w.rtol, atol=w.atol)
    else:
        adjoint_options = {"norm": "seminorm"} if w.mode == "adjoint-seminorm" else None
        ys = odeint_adjoint(counting, y0, w.t, rtol=w.rtol, atol=w.atol, adjoint_options=adjoint_options)
    forward_calls = counting.calls
    ys[-1].square().sum().backward()
    synchronize(y0.device)
    return time.perf_counter() - start, forward_calls, counting.calls - forward_calls, counting.seconds


def time_of_vjp_part(w: Workload, repeats: int = 50) -> float:
    """Median seconds of the vector-Jacobian product of one func evaluation (backward of its graph only)."""
    t0 = w.t[0].to(w.y0.dtype)
    samples = []
    for _ in range(repeats):
        y = w.y0.clone().requires_grad_(True)
        out = w.field(t0, y)
        start = time.perf_counter()
        torch.autograd.grad(out, (y, *w.field.parameters()), torch.ones_like(out))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def forward_solver(library: str, w: Workload):
    """solve(func): the forward workload's solve without gradients, with func given."""
    odeint = ODEINT[library]

    def solve(func):
        with torch.no_grad():
            return odeint(func, w.y0, w.t, rtol=w.rtol, atol=w.atol)

    return solve


def time_replayed(solve, replay: Replay) -> float:
    """Seconds of one solve whose func replays recorded outputs (the solver's own work)."""
    replay.rewind()
    synchronize(replay.outputs[0].device)
    start = time.perf_counter()
    solve(replay)
    synchronize(replay.outputs[0].device)
    elapsed = time.perf_counter() - start
    replay.rewind()  # checks that every recorded output was used
    return elapsed


def measure(w: Workload, repeats: int) -> list[dict]:
    """Runs the two libraries alternately (swapping who goes first), so both see the same machine load.

    Forward workloads are also solved with func replaying its recorded outputs, alternated in the same way:
    the solver's own time, apart from func and from what func's calls cost the code around them."""
    vjp = time_of_vjp_part(w)
    libraries = ("torchdiffeq", "pynodeta")
    counting = {library: Counting(w.field) for library in libraries}
    replayed = w.mode == "forward"
    solvers = {library: forward_solver(library, w) for library in libraries}
    replays = {library: Replay(w.field, solvers[library]) for library in libraries} if replayed else {}
    for library in libraries:
        run_once(library, w, counting[library])  # warm-up
    times: dict[str, list[float]] = {library: [] for library in libraries}
    solver_alone: dict[str, list[float]] = {library: [] for library in libraries}
    func_alone: dict[str, list[float]] = {library: [] for library in libraries}
    nfe: dict[str, tuple[int, int]] = {}
    inside: dict[str, list[float]] = {library: [] for library in libraries}
    for repeat in range(repeats):
        for library in libraries if repeat % 2 == 0 else libraries[::-1]:
            elapsed, nfe_fwd, nfe_bwd, in_func = run_once(library, w, counting[library])
            times[library].append(elapsed)
            inside[library].append(in_func)
            nfe[library] = (nfe_fwd, nfe_bwd)
            if replayed:
                solver_alone[library].append(time_replayed(solvers[library], replays[library]))
                func_alone[library].append(replays[library].time_func_alone())
    rows = []
    for library in libraries:
        median = statistics.median(times[library])
        # time inside func is measured; the backward through func's own graph is estimated from one VJP
        # (direct backprop: one per forward evaluation; adjoint: one per backward evaluation)
        with_backward = {"forward": 0, "direct": nfe[library][0]}.get(w.mode, nfe[library][1])
        in_func = statistics.median(inside[library]) + with_backward * vjp
        # on a GPU the time around a func call is only its launch time: the split is not measured there
        overhead = max(0.0, (median - in_func) / median) if w.y0.device.type == "cpu" else None
        rows.append(dict(workload=w.name, library=library, nfe=nfe[library], median=median, overhead=overhead,
                         solver_alone=statistics.median(solver_alone[library]) if replayed else None,
                         func_alone=statistics.median(func_alone[library]) if replayed else None))
    return rows


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{fraction:.0%}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.2f}"


def _ms_pair(first: float | None, second: float | None) -> str:
    return "–" if first is None or second is None else f"{_ms(first)} / {_ms(second)}"


def _nfe(pair) -> str:
    return f"{pair[0]} / {pair[1] or '–'}"


def save_solver_report(raw: dict) -> Path:
    """The report (one row per workload) from the raw rows that :func:`main` collects."""
    rows = [[r["workload"], _nfe(r["nfe_torchdiffeq"]), _nfe(r["nfe_pynodeta"]), r["median_s_torchdiffeq"] * 1e3,
             r["median_s_pynodeta"] * 1e3, r["ratio"], _percent(r.get("overhead_torchdiffeq")),
             _percent(r.get("overhead_pynodeta")),
             _ms_pair(r.get("solver_alone_s_torchdiffeq"), r.get("solver_alone_s_pynodeta")),
             _ms_pair(r.get("func_alone_s_torchdiffeq"), r.get("func_alone_s_pynodeta"))] for r in raw["rows"]]
    table = Table(["workload", "NFE fwd / bwd (torchdiffeq)", "NFE fwd / bwd (pynodeta)", "torchdiffeq ms",
                   "pynodeta ms", "pynodeta / torchdiffeq", "overhead (torchdiffeq)", "overhead (pynodeta)",
                   "solver alone ms (torchdiffeq / pynodeta)", "func alone ms (torchdiffeq / pynodeta)"], rows,
                  f"median wall time of {raw['repeats']} alternated runs, {raw['threads']} thread(s)")
    notes = ["The two libraries run alternately in one process, so both see the same machine load: the ratio "
             "is the figure to read; it moves by about ±0.05 from run to run.",
             "overhead = (solve time - time inside func) / solve time, medians over the runs: the time inside "
             "func is measured around every call; the backward through func's own graph is estimated as "
             "(evaluations) x (the median time of one VJP), so the gradient rows' overhead is an estimate.",
             "solver alone / func alone (forward rows): the same solve with func replaced by a replay of the "
             "outputs it gave in a recorded solve (identical steps, a func that costs nothing), and func's "
             "recorded calls made back to back, each alternated with the other runs. What the solve takes "
             "beyond the two is what interleaving them costs (the solver's small ops and func's kernels evict "
             "each other's code and data from the caches); the overhead column counts it as solver time."]
    device = raw.get("device", "cpu")
    if device != "cpu":
        notes[1] = (f"On {raw.get('device_name', device)} every timed run ends with a device synchronisation; the "
                    "overhead split is not measured there (the time around a func call is its launch time).")
        notes[2] = ("solver alone / func alone (forward rows): the solve with func replaced by a replay of its "
                    "recorded outputs, and func's recorded calls back to back.")
    if raw.get("note"):
        notes.append(raw["note"])
    name, title = device_report("bench_solver", "pynodeta against torchdiffeq 0.2.5: the same ODE workloads", raw)
    return save_report(name, title, [table], notes=notes, command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=11)
    args = parser.parse_args(argv)
    if rebuilt_from_raw(args, save_solver_report):
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}\n")
    print("| workload | library | NFE fwd | NFE bwd | median ms | pynodeta / torchdiffeq | solver overhead | "
          "solver alone ms | func alone ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for w in workloads(args.device):
        if args.workloads and not any(s in w.name for s in args.workloads):
            continue
        reference, ours = measure(w, args.repeats)
        for row in (reference, ours):
            ratio = f"{ours['median'] / reference['median']:.2f}" if row is ours else ""
            print(f"| {row['workload']} | {row['library']} | {row['nfe'][0]} | {row['nfe'][1]} | "
                  f"{row['median'] * 1e3:.1f} | {ratio} | {_percent(row['overhead'])} | "
                  f"{_ms(row['solver_alone'])} | {_ms(row['func_alone'])} |")
        results.append(dict(workload=w.name, nfe_torchdiffeq=reference["nfe"], nfe_pynodeta=ours["nfe"],
                            median_s_torchdiffeq=reference["median"], median_s_pynodeta=ours["median"],
                            ratio=ours["median"] / reference["median"], overhead_torchdiffeq=reference["overhead"],
                            overhead_pynodeta=ours["overhead"], solver_alone_s_torchdiffeq=reference["solver_alone"],
                            solver_alone_s_pynodeta=ours["solver_alone"],
                            func_alone_s_torchdiffeq=reference["func_alone"], func_alone_s_pynodeta=ours["func_alone"]))
    device = device_record(args.device)
    raw = save_raw(device_report("bench_solver", "", device)[0],
                   dict(torch=torch.__version__, threads=args.threads, repeats=args.repeats, rows=results,
                        note=args.note, **device))
    print(save_solver_report(load_raw(raw)))


if __name__ == "__main__":
    main()
