"""digits_edm2's training step on a machine that other processes share: fixed thread counts against
``AdaptiveThreads``, which runs fewer threads while the cores are in use elsewhere.

    PYTHONPATH=. python3 benchmarks/threads_under_load.py [--seconds 40] [--settle 12] [--max-threads 2]

Each policy trains in a fresh process for ``--seconds`` (one step = digits_edm2's network and EDM2 loss on
one batch of 64, backward, Adam), in five situations:
  idle                     nothing else runs
  one busy core            another process spins on one core (a CPU-bound neighbour)
  a half-busy core         another process is busy half of every 10 ms
  two trainings            a second, identical training with the same policy runs beside it (two users)
  a CPU quota              the training runs in a cgroup whose CFS quota is one core fewer than the machine's
                           (what a container's --cpus sets); needs a cgroup folder it may write (root on Linux),
                           ``--cgroup-parent``, else this situation is left out and says why
Policies: 1 thread, ``--max-threads`` threads, and ``AdaptiveThreads(max_threads)`` (its default 5 s
window, so it first runs ``--max-threads`` threads). Reported: the median wall time of a step after
``--settle`` seconds, and the steps per second over the whole run, the adaptive policy's first window
included. The two-trainings rows average the two processes.
Also measured: the largest difference between the weights after a few training steps at 1 and at
``--max-threads`` threads (a thread count splits some reductions differently, so it sets their round-off).
Saves benchmarks/results/threads_under_load.json (rendered into docs/results.md) and the raw measurements
under results/raw/; ``--from-raw FILE`` rebuilds the report from them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixed_precision_step import shipped_edm2  # noqa: E402

from reporting import Table, add_from_raw, load_raw, raw_machine, rebuilt_from_raw, save_raw, save_report  # noqa: E402

NAME = "threads_under_load"
SITUATIONS = ("idle", "one busy core", "a half-busy core", "two trainings", "a CPU quota")
NEIGHBOURS = {  # the neighbour process of a situation, as Python source
    "one busy core": "while True: pass",
    "a half-busy core": ("import time\nwhile True:\n    t = time.perf_counter()\n"
                         "    while time.perf_counter() - t < 0.005: pass\n    time.sleep(0.005)"),
}


def policies(max_threads: int) -> list[str]:
    return ["1", str(max_threads), f"adaptive:{max_threads}"] if max_threads > 1 else ["1", "adaptive:1"]


def training(threads: int, seed: int = 0):
    """(step, module) of digits_edm2's training on fixed data, ``threads`` torch threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    module, batch = shipped_edm2()
    module.train()
    optimizer = torch.optim.Adam(module.trained_parameters(), lr=1e-3, betas=(0.9, 0.99))
    x0 = torch.rand(batch, *module.sample_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.objective.loss(module.model, x0).mean().backward()
        optimizer.step()

    return step, module


def worker(policy: str, seconds: float, out: Path) -> None:
    """Train for ``seconds`` under ``policy``; write each step's end time and the thread counts used."""
    from pynodeta.train.adaptive_threads import ThreadGovernor

    adaptive = policy.startswith("adaptive:")
    threads = int(policy.split(":")[-1])
    step, _ = training(threads)
    governor = ThreadGovernor(threads, say=lambda line: None) if adaptive else None
    step()  # first-call costs out of the timing
    if governor is not None:
        governor.start()
    start = time.perf_counter()
    ends, used = [], []
    while time.perf_counter() - start < seconds:
        step()
        if governor is not None:
            governor.poll()
        ends.append(time.perf_counter() - start)
        used.append(torch.get_num_threads())
    out.write_text(json.dumps({"ends": ends, "threads": used}))


class QuotaCgroup:
    """A cgroup (v1 ``cpu`` or v2) under ``parent`` whose CFS quota is ``cores`` cores, for the workers to start
    in; removed on exit. Where v1's cpuacct is mounted beside ``cpu`` instead of with it, the same cgroup is
    made there too, as systemd does, so that the group's CPU time can be read. ``name``: the folder's name
    (default: one of this process's own); :meth:`child` makes one inside it."""

    def __init__(self, parent: Path, cores: float, name: str | None = None):
        name = name or f"pynodeta-threads-under-load-{os.getpid()}"
        self.folder = parent / name
        self.folder.mkdir()
        self.folders = [self.folder]
        if (self.folder / "cpu.cfs_quota_us").exists():
            period = int((self.folder / "cpu.cfs_period_us").read_text())
            (self.folder / "cpu.cfs_quota_us").write_text(str(int(cores * period)))
            accounting = _cpuacct_beside(self.folder)
            if not (self.folder / "cpuacct.usage").exists() and accounting is not None:
                accounting.mkdir()
                self.folders.append(accounting)
        elif (self.folder / "cpu.max").exists():
            (self.folder / "cpu.max").write_text(f"{int(cores * 100000)} 100000")
        else:
            self.folder.rmdir()
            raise OSError(f"the cpu controller is not enabled for the children of {parent}")

    def child(self, name: str, cores: float) -> QuotaCgroup:
        """A cgroup inside this one with a quota of its own (v2: the cpu controller enabled for it first)."""
        if (self.folder / "cgroup.subtree_control").exists():
            (self.folder / "cgroup.subtree_control").write_text("+cpu")
        return QuotaCgroup(self.folder, cores, name)

    def join(self) -> None:
        """In a child before exec: move into the cgroup."""
        for folder in self.folders:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for folder in self.folders:
            folder.rmdir()


def _cpuacct_beside(folder: Path) -> Path | None:
    """The same cgroup's folder in a v1 cpuacct hierarchy mounted beside the cpu one (``.../cpu/a/b`` ->
    ``.../cpuacct/a/b``), None where there is none."""
    for mount in folder.parents:
        if mount.name == "cpu" and (mount.parent / "cpuacct").is_dir():
            return mount.parent / "cpuacct" / folder.relative_to(mount)
    return None


def quota_cgroup(parent: str | None, cores: float) -> tuple[QuotaCgroup | None, str]:
    """The cgroup for 'a CPU quota', or None and why not."""
    candidates = [Path(parent)] if parent else [Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")]
    reasons = []
    for folder in candidates:
        try:
            return QuotaCgroup(folder, cores), ""
        except OSError as error:
            reasons.append(f"{folder}: {error}")
    return None, "; ".join(reasons)


def run_situation(situation: str, policy: str, seconds: float, cgroup: QuotaCgroup | None = None) -> list[dict]:
    """The worker's record(s) for one policy in one situation (two for 'two trainings'); ``cgroup``: the
    workers start in it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                      os.environ.get("PYTHONPATH")]))}
    neighbour = None
    if situation in NEIGHBOURS:
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOURS[situation]], env=env)
        time.sleep(2.0)  # the neighbour is running before the training starts
    copies = 2 if situation == "two trainings" else 1
    with tempfile.TemporaryDirectory() as folder:
        outs = [Path(folder) / f"{i}.json" for i in range(copies)]
        try:
            workers = [subprocess.Popen([sys.executable, __file__, "--worker", policy, "--seconds", str(seconds),
                                         "--worker-out", str(out)], env=env,
                                        preexec_fn=cgroup.join if cgroup is not None else None) for out in outs]
            for process in workers:
                if process.wait() != 0:
                    raise SystemExit(f"the worker for {policy!r} in {situation!r} failed")
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        return [json.loads(out.read_text()) for out in outs]


def summary(records: list[dict], settle: float) -> dict:
    """Median step time after ``settle`` s and steps/s over the run, averaged over the records."""
    medians, rates, settled_threads = [], [], []
    for record in records:
        ends = record["ends"]
        steps = [(b - a, n) for a, b, n in zip(ends, ends[1:], record["threads"][1:]) if a >= settle]
        medians.append(statistics.median(d for d, _ in steps))
        rates.append(len(ends) / ends[-1])
        settled_threads.append(statistics.median(n for _, n in steps))
    return {"median_step_s": statistics.fmean(medians), "steps_per_s": statistics.fmean(rates),
            "settled_threads": statistics.fmean(settled_threads)}


def weight_difference(max_threads: int, steps: int = 3) -> dict:
    """After ``steps`` training steps at 1 and at ``max_threads`` threads from the same start: the largest
    absolute difference of the weights, and how many of the weight tensors differ at all."""
    weights = []
    for threads in (1, max_threads):
        step, module = training(threads)
        for _ in range(steps):
            step()
        weights.append([p.detach().clone() for p in module.trained_parameters()])
    pairs = list(zip(*weights))
    return {"steps": steps, "max_abs": max(float((a - b).abs().max()) for a, b in pairs),
            "tensors_differing": sum(not torch.equal(a, b) for a, b in pairs), "tensors": len(pairs)}


def save_threads_report(raw: dict) -> Path:
    rows = []
    for situation in (s for s in SITUATIONS if s in raw["results"]):
        results = raw["results"][situation]
        best_fixed = min(r["median_step_s"] for p, r in results.items() if not p.startswith("adaptive"))
        for policy, r in results.items():
            label = f"AdaptiveThreads (up to {policy.split(':')[1]})" if policy.startswith("adaptive") \
                else f"{policy} thread(s)"
            rows.append([situation, label, r["median_step_s"] * 1e3, r["steps_per_s"], r["settled_threads"],
                         r["median_step_s"] / best_fixed])
    table = Table(["situation", "threads", "median ms per step (settled)", "steps/s over the run",
                   "threads used (settled)", "step time / best fixed count"], rows,
                  caption=f"digits_edm2's training step (batch {raw['batch_size']}), {raw['seconds']:g} s per run "
                          f"in a fresh process; settled: after the first {raw['settle']:g} s")
    quota = raw.get("quota")
    notes = [f"{raw['cores']} cores available to the process. Neighbours: 'one busy core' spins in Python; "
             "'a half-busy core' spins 5 ms of every 10 ms; 'two trainings' is a second process training the "
             "same way with the same policy (the rows average the two).",
             f"'a CPU quota': the training alone, in a cgroup whose CFS quota allows {quota['cores']:g} of the "
             f"{raw['cores']} cores (a container's --cpus {quota['cores']:g}); the fixed counts ignore the quota, as "
             f"torch's default count does, AdaptiveThreads reads it at its start." if quota and "cores" in quota else
             f"'a CPU quota' was left out: {quota['left_out']}" if quota else "",
             "AdaptiveThreads reads the cores' load every 5 s (its default) and starts on the most threads, so its "
             "'steps/s over the run' includes a first window on too many threads.",
             "The runs follow one another, so a drift in the machine's speed between them is not cancelled: on this "
             "machine repeated runs of one row differed by up to a third, which the ratios near 1 are within.",
             _difference_note(raw)]
    notes = [note for note in notes if note]
    if raw.get("machine_note"):
        notes.append(raw["machine_note"])
    return save_report(NAME, "Threads on a shared CPU: fixed counts against AdaptiveThreads", [table], notes=notes,
                       command=raw["command"], machine=raw_machine(raw, threads=raw["max_threads"]))


def _difference_note(raw: dict) -> str:
    d = raw["weight_difference"]
    if not d["tensors_differing"]:
        return (f"{d['steps']} training steps at 1 and at {raw['max_threads']} threads left bit-identical weights "
                f"on this machine.")
    return (f"{d['steps']} training steps at 1 and at {raw['max_threads']} threads from the same start left "
            f"{d['tensors_differing']} of {d['tensors']} weight tensors different, by at most {d['max_abs']:.2g}: "
            f"the thread count sets the round-off of some reductions, so a run that must repeat bit for bit "
            f"keeps a fixed count.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="training time of each run (default 40)")
    parser.add_argument("--settle", type=float, default=12.0,
                        help="seconds left out of the median step time (default 12)")
    parser.add_argument("--max-threads", type=int, default=2, help="the most threads (default 2)")
    parser.add_argument("--machine-note", default="", help="how the machine was shared otherwise")
    parser.add_argument("--cgroup-parent", default=None,
                        help="a cgroup folder to create the quota's cgroup in (default: /sys/fs/cgroup/cpu, "
                             "then /sys/fs/cgroup)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    add_from_raw(parser, "measuring")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.seconds, Path(args.worker_out))
        return
    if rebuilt_from_raw(args, save_threads_report):
        return
    if args.max_threads < 1 or not args.seconds > args.settle >= 0:
        raise SystemExit("--max-threads must be >= 1 and --seconds > --settle >= 0")
    cores = len(os.sched_getaffinity(0))
    cgroup, why_not = quota_cgroup(args.cgroup_parent, cores - 1) if cores > 1 else (None, "one core only")
    quota = {"cores": cores - 1} if cgroup is not None else {"left_out": why_not}
    if cgroup is None:
        print(f"'a CPU quota' left out: {why_not}", flush=True)
    results = {}
    try:
        for situation in SITUATIONS:
            if situation == "a CPU quota" and cgroup is None:
                continue
            results[situation] = {}
            for policy in policies(args.max_threads):
                records = run_situation(situation, policy, args.seconds,
                                        cgroup if situation == "a CPU quota" else None)
                results[situation][policy] = summary(records, args.settle)
                r = results[situation][policy]
                print(f"{situation:18s} {policy:12s} {r['median_step_s'] * 1e3:7.1f} ms/step, "
                      f"{r['steps_per_s']:5.2f} steps/s, threads {r['settled_threads']:.1f}", flush=True)
    finally:
        if cgroup is not None:
            cgroup.remove()
    _, batch = shipped_edm2()
    raw = {"seconds": args.seconds, "settle": args.settle, "max_threads": args.max_threads, "batch_size": batch,
           "cores": cores, "machine_note": args.machine_note, "quota": quota,
           "weight_difference": weight_difference(args.max_threads), "results": results}
    print(f"-> {save_threads_report(load_raw(save_raw(NAME, raw)))}")


if __name__ == "__main__":
    main()
