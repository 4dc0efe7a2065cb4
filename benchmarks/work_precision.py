"""Work-precision: error against a tight reference vs NFE and wall time, for every solver pynodeta reaches.

Solvers: the torch backend (dopri5, tsit5, bosh3), the scipy backend (rk45, dop853, radau, bdf, lsoda),
torchdiffeq 0.2.5's dopri5 in the same process (the reference the ratios are taken against), and the
julia backend when juliacall and Julia are installed. Problems: Van der Pol mu=1 (non-stiff),
Lotka-Volterra, a 4-d linear system (exact matrix-exponential solution), and Van der Pol mu=1000
(stiff; implicit methods only). Saves one table per problem as the report
benchmarks/results/work_precision.json (rendered into docs/results.md) and the raw rows under
benchmarks/results/raw/; ``--from-raw FILE`` rebuilds the report from them without solving.

    python benchmarks/work_precision.py
    python benchmarks/work_precision.py --problems linear --tolerances 1e-4 1e-8 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchdiffeq

import pynodeta as pn
from pynodeta.ode.errors import BackendUnavailableError, ODESolveError
from pynodeta.ode.problems import lotka_volterra, van_der_pol

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import Table, add_from_raw, load_raw, raw_machine, rebuilt_from_raw, save_raw, save_report  # noqa: E402

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Problem:
    name: str
    func: Func
    y0: torch.Tensor
    t: torch.Tensor  # output times; the error is the max abs error over all of them
    stiff: bool
    exact: Callable[[torch.Tensor], torch.Tensor] | None = None  # (len(t), *y0.shape), if known


A_LINEAR = torch.tensor(
    [[-0.1, 2.0, 0.0, 0.0], [-2.0, -0.1, 0.5, 0.0], [0.0, 0.0, -0.3, 1.0], [0.0, 0.0, -1.0, -0.3]],
    dtype=torch.float64,
)


def linear_exact(y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.linalg.matrix_exp(A_LINEAR * (tk - t[0])) @ y0 for tk in t])


def problems() -> dict[str, Problem]:
    f64 = dict(dtype=torch.float64)
    y_lin = torch.tensor([1.0, 0.0, 0.5, -0.5], **f64)
    t_lin = torch.linspace(0, 10, 11, **f64)
    return {
        "vdp1": Problem("Van der Pol mu=1", van_der_pol(1.0), torch.tensor([2.0, 0.0], **f64),
                        torch.linspace(0, 10, 11, **f64), stiff=False),
        "lotka": Problem("Lotka-Volterra", lotka_volterra, torch.tensor([1.0, 1.0], **f64),
                         torch.linspace(0, 10, 11, **f64), stiff=False),
        "linear": Problem("linear 4-d (matrix exponential)", lambda t, y: A_LINEAR @ y, y_lin, t_lin,
                          stiff=False, exact=lambda t: linear_exact(y_lin, t)),
        "vdp1000": Problem("Van der Pol mu=1000 (stiff)", van_der_pol(1000.0),
                           torch.tensor([2.0, 0.0], **f64), torch.linspace(0, 100, 6, **f64), stiff=True),
    }


@dataclass(frozen=True)
class Solver:
    label: str
    backend: str | None  # None: torchdiffeq
    method: str
    stiff_capable: bool
    nonstiff: bool = True


SOLVERS = [
    Solver("torchdiffeq dopri5", None, "dopri5", False),
    Solver("torch dopri5", "torch", "dopri5", False),
    Solver("torch tsit5", "torch", "tsit5", False),
    Solver("torch bosh3", "torch", "bosh3", False),
    Solver("scipy rk45", "scipy", "rk45", False),
    Solver("scipy dop853", "scipy", "dop853", False),
    Solver("scipy radau", "scipy", "radau", True),
    Solver("scipy bdf", "scipy", "bdf", True),
    Solver("scipy lsoda", "scipy", "lsoda", True),
    Solver("julia tsit5", "julia", "tsit5", False),
    Solver("julia vern7", "julia", "vern7", False),
    Solver("julia rodas5", "julia", "rodas5", True),
    Solver("julia kencarp4", "julia", "kencarp4", True),
]


def run(solver: Solver, problem: Problem, rtol: float, atol: float) -> tuple[torch.Tensor, int]:
    """Solve once; returns the outputs and the number of func evaluations."""
    if solver.backend is None:
        count = [0]

        def counted(t, y):
            count[0] += 1
            return problem.func(t, y)

        ys = torchdiffeq.odeint(counted, problem.y0, problem.t, rtol=rtol, atol=atol, method=solver.method)
        return ys, count[0]
    sol = pn.solve(problem.func, problem.y0, problem.t, method=solver.method,
                   controller=pn.IController(rtol=rtol, atol=atol), backend=solver.backend)
    return sol.ys, sol.stats.nfe


def reference(problem: Problem) -> torch.Tensor:
    if problem.exact is not None:
        return problem.exact(problem.t)
    return pn.solve(problem.func, problem.y0, problem.t, method="radau",
                    controller=pn.IController(rtol=1e-13, atol=1e-13), backend="scipy").ys


def julia_available() -> bool:
    try:
        pn.solve(lambda t, y: -y, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0]).double(),
                 method="tsit5", backend="julia")
    except BackendUnavailableError:
        return False
    return True


def measure(solver: Solver, problem: Problem, rtol: float, ref: torch.Tensor, repeats: int):
    """(max abs error, NFE, best wall time in ms), or None if the solver failed at this tolerance."""
    atol = rtol * 1e-3
    try:
        run(solver, problem, rtol, atol)  # warm-up (Julia compiles on first use)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ys, nfe = run(solver, problem, rtol, atol)
            times.append(time.perf_counter() - start)
    except ODESolveError:
        return None
    return (ys - ref).abs().max().item(), nfe, 1e3 * min(times)


def measure_problem(problem: Problem, solvers: list[Solver], tolerances: list[float], repeats: int) -> dict:
    """Rows per tolerance; ratios against torchdiffeq dopri5 (non-stiff) or scipy radau (stiff)."""
    ref = reference(problem)
    baseline_solver = next(s for s in solvers if s.label == ("scipy radau" if problem.stiff else SOLVERS[0].label))
    rows = []
    for rtol in tolerances:
        baseline = measure(baseline_solver, problem, rtol, ref, repeats)
        for solver in solvers:
            result = baseline if solver is baseline_solver else measure(solver, problem, rtol, ref, repeats)
            if result is None:
                rows.append([solver.label, f"{rtol:.0e}", "failed", "", "", "", ""])
                continue
            err, nfe, ms = result
            ratios = [nfe / baseline[1], ms / baseline[2]] if baseline else ["-", "-"]
            rows.append([solver.label, f"{rtol:.0e}", err, nfe, ms, *ratios])
    reference_note = "exact solution" if problem.exact else "scipy radau at rtol = atol = 1e-13"
    return {"problem": problem.name, "reference": reference_note, "baseline": baseline_solver.label, "rows": rows}


def problem_table(measured: dict) -> Table:
    return Table(["solver", "rtol", "max error", "NFE", "time (ms)", f"NFE / {measured['baseline']}",
                  "time / baseline"], measured["rows"],
                 f"{measured['problem']} (error vs {measured['reference']}; atol = rtol * 1e-3)")


def save_work_precision_report(raw: dict) -> Path:
    notes = ["Best of the timed runs per cell, one thread; timings on a shared, loaded machine."]
    if not raw["julia"]:
        notes.append("The julia backend was unavailable: its rows are left out.")
    return save_report("work_precision", "Work-precision: error against NFE and time for every solver",
                       [problem_table(m) for m in raw["problems"]], notes=notes, command=raw["command"],
                       machine=raw_machine(raw, threads=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", nargs="+", default=list(problems()), choices=list(problems()))
    parser.add_argument("--tolerances", nargs="+", type=float, default=[1e-3, 1e-5, 1e-7, 1e-9])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (best is reported)")
    add_from_raw(parser, "solving")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_work_precision_report):
        return
    with_julia = julia_available()
    if not with_julia:
        print("(julia backend unavailable: its rows are left out; see README for enabling it)\n")
    torch.set_num_threads(1)
    measured = []
    for key in args.problems:
        problem = problems()[key]
        chosen = [s for s in SOLVERS if (s.backend != "julia" or with_julia)
                  and (s.stiff_capable if problem.stiff else s.nonstiff)]
        measured.append(measure_problem(problem, chosen, args.tolerances, args.repeats))
        print(f"{problem.name}: {len(measured[-1]['rows'])} rows", flush=True)
    raw = save_raw("work_precision", {"julia": with_julia, "problems": measured})
    print(save_work_precision_report(load_raw(raw)))


if __name__ == "__main__":
    main()
