"""Diffusion core overheads: (1) samplers vs the bare network evaluations they make; (2) the likelihood ODE
through pynodeta's dopri5 vs the same ODE through torchdiffeq, in one process.

    PYTHONPATH=. python3 benchmarks/bench_diffusion_sampler.py [--repeats 10] [--threads 1] [--width 32]

Times are CPU seconds of this (single-threaded) process, medians over repeats.
(1) For each sampler (digits-sized batch, an EDMPrecond-wrapped conv net), the overhead over the bare
network evaluations (target <= 5 %), two ways: within each sampling run, the time outside the denoiser
calls over the time inside them ("split", the primary figure); and a full run against a separate loop
making the same denoiser calls with nothing else ("separate runs"; alternated, but noisier).
(2) ``log_likelihood`` (dopri5, Hutchinson, rtol = atol = 1e-5) against a torchdiffeq ``odeint`` of the
identical augmented ODE with the same probes: time ratio, NFE of each, largest difference in log p.
Saves the report benchmarks/results/bench_diffusion_sampler[_width<W>].json (rendered into docs/results.md)
and the raw measurements under benchmarks/results/raw/; ``--from-raw FILE`` rebuilds the report from them.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchdiffeq
from torch import nn

import pynodeta.diffusion as pd
from pynodeta import record_stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import Table, add_from_raw, load_raw, raw_machine, rebuilt_from_raw, save_raw, save_report  # noqa: E402


class BenchNet(nn.Module):
    """A digits-sized time-first conv net F(c_noise, x): 4 conv layers of ``width`` channels, time added per layer."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(3))
        self.time = nn.Linear(1, width * 3)
        self.head = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shifts = self.time(t[:, None]).chunk(3, dim=1)
        h = self.stem(x)
        for block, shift in zip(self.blocks, shifts):
            h = h + block(torch.nn.functional.silu(h)) + shift[:, :, None, None]
        return self.head(torch.nn.functional.silu(h))


def _seconds(call) -> float:
    """CPU seconds of this process: on a shared, loaded machine wall time mostly measures the neighbours."""
    start = time.process_time()
    call()
    return time.process_time() - start


class TimedDenoiser:
    """Wraps a denoiser and adds up the CPU time spent inside it, so one run splits into network and the rest."""

    def __init__(self, denoiser):
        self.denoiser, self.inside = denoiser, 0.0

    def __call__(self, x, sigma):
        start = time.process_time()
        out = self.denoiser(x, sigma)
        self.inside += time.process_time() - start
        return out


def sampler_overhead(denoiser, x: torch.Tensor, steps: int, repeats: int) -> dict:
    """Two estimates per sampler: the split of each run (time outside / inside the network) and a separate
    bare loop of the same calls against the full run (medians; noisier, since the two runs differ)."""
    sigmas = pd.karras_sigmas(steps)
    results = {}
    for name, sampler in pd.SAMPLERS.items():
        with record_stats() as log:
            sampler(denoiser, x, sigmas)
        visited = log[-1].t_evaluated  # the σ of every evaluation the sampler made, in order

        def bare(visited=visited):
            for sigma in visited:
                denoiser(x, torch.full((x.shape[0],), sigma))

        timed = TimedDenoiser(denoiser)

        def full(sampler=sampler, timed=timed):
            sampler(timed, x, sigmas)

        times: tuple[list[float], list[float]] = ([], [])
        split: list[float] = []
        for i in range(repeats + 2):
            for bucket, call in zip(times, (bare, full)):
                timed.inside = 0.0
                seconds = _seconds(call)
                if i >= 2:  # two warm-up rounds
                    bucket.append(seconds)
                    if call is full:
                        split.append((seconds - timed.inside) / timed.inside)
        bare_s, full_s = statistics.median(times[0]), statistics.median(times[1])
        results[name] = {"nfe": len(visited), "bare_ms": bare_s * 1e3, "sampler_ms": full_s * 1e3,
                         "overhead_percent_split": statistics.median(split) * 100,
                         "overhead_percent_separate_runs": (full_s / bare_s - 1) * 100}
    return results


def torchdiffeq_log_likelihood(denoiser, x, probe, sigma_min, sigma_max, rtol, atol) -> tuple[torch.Tensor, int]:
    """The identical augmented ODE of ``pd.log_likelihood`` (Hutchinson) through torchdiffeq.odeint."""
    nfe = 0

    def augmented(sigma, state):
        nonlocal nfe
        nfe += 1
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            drift = (y - denoiser(y, sigma.expand(y.shape[0]))) / sigma
            (vjp,) = torch.autograd.grad(drift, y, probe)
        return drift.detach(), (vjp * probe).reshape(y.shape[0], -1).sum(1).detach()

    times = torch.tensor([sigma_min, sigma_max], dtype=x.dtype)
    with torch.no_grad():
        # log_likelihood lands its last step on σ_max (step_t at both ends of the span): the same here
        xs, deltas = torchdiffeq.odeint(augmented, (x, torch.zeros(x.shape[0], dtype=x.dtype)), times,
                                        method="dopri5", rtol=rtol, atol=atol, options={"step_t": times})
    dim = x[0].numel()
    prior = -0.5 * (xs[-1].reshape(x.shape[0], -1) ** 2).sum(1) / sigma_max**2 \
        - 0.5 * dim * math.log(2 * math.pi * sigma_max**2)
    return prior + deltas[-1], nfe


def likelihood_comparison(name: str, denoiser, x: torch.Tensor, repeats: int, tol: float = 1e-5) -> dict:
    seed = 7
    probe = (2 * torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(seed)) - 1).to(x.dtype)
    ours_t, theirs_t = [], []
    for _ in range(repeats):
        with record_stats() as log:
            start = time.process_time()
            ours = pd.log_likelihood(denoiser, x, rtol=tol, atol=tol, generator=torch.Generator().manual_seed(seed))
            ours_t.append(time.process_time() - start)
        start = time.process_time()
        theirs, nfe_theirs = torchdiffeq_log_likelihood(denoiser, x, probe, 0.002, 80.0, tol, tol)
        theirs_t.append(time.process_time() - start)
    ours_s, theirs_s = statistics.median(ours_t), statistics.median(theirs_t)
    return {"problem": name, "dim": x[0].numel(), "batch": x.shape[0], "rtol": tol, "atol": tol,
            "pynodeta_s": ours_s, "torchdiffeq_s": theirs_s, "time_ratio": ours_s / theirs_s,
            "nfe_pynodeta": log[-1].nfe, "nfe_torchdiffeq": nfe_theirs,
            "max_abs_diff_log_p": float((ours - theirs).abs().max()),
            "mean_bits_per_dim": float(-(ours.mean() / (x[0].numel() * math.log(2))))}


def report_name(width: int) -> str:
    return "bench_diffusion_sampler" if width == 32 else f"bench_diffusion_sampler_width{width}"


def save_sampler_report(raw: dict) -> Path:
    """The report (sampler overheads, likelihood against torchdiffeq) from the raw dict :func:`main` builds."""
    samplers = Table(["sampler", "NFE", "bare network ms / run", "sampler ms / run", "overhead, in-run split (%)",
                      "overhead, separate runs (%)"],
                     [[name, r["nfe"], r["bare_ms"], r["sampler_ms"], r["overhead_percent_split"],
                       r["overhead_percent_separate_runs"]] for name, r in raw["samplers"].items()],
                     f"{raw['steps']} Karras steps, batch {raw['batch']} x 1 x 8 x 8, EDMPrecond around a conv net "
                     f"of width {raw['width']}; {raw['clock']}, medians of {raw['repeats']} repeats; target <= 5 %")
    likelihood = Table(["problem", "batch x dim", "pynodeta s", "torchdiffeq s", "time ratio",
                        "NFE pynodeta / torchdiffeq", "max abs diff log p (nats)"],
                       [[r["problem"], f"{r['batch']} x {r['dim']}", r["pynodeta_s"], r["torchdiffeq_s"],
                         r["time_ratio"], f"{r['nfe_pynodeta']} / {r['nfe_torchdiffeq']}", r["max_abs_diff_log_p"]]
                        for r in raw["likelihood"]],
                       "log_likelihood (dopri5, Hutchinson, rtol = atol = 1e-5, sigma 0.002 -> 80) against the "
                       "identical augmented ODE through torchdiffeq.odeint")
    notes = ["Times are process CPU seconds of one thread, which leave out time the scheduler gave to other "
             "processes; the 'separate runs' overhead compares two noisy runs and can come out negative."]
    if raw.get("note"):
        notes.append(raw["note"])
    return save_report(report_name(raw["width"]), f"Diffusion samplers and likelihood: overhead (width {raw['width']})",
                       [samplers, likelihood], notes=notes, command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="channels of the benchmark conv net")
    parser.add_argument("--note", default=None, help="a note on the run (e.g. the machine's load) for the report")
    add_from_raw(parser, "measuring")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_sampler_report):
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    denoiser = pd.EDMPrecond(BenchNet(args.width)).eval().requires_grad_(False)
    x = torch.randn(64, 1, 8, 8) * 80.0
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "repeats": args.repeats, "steps": args.steps, "width": args.width,
              "batch": x.shape[0], "clock": "process CPU time", "note": args.note,
              "samplers": sampler_overhead(denoiser, x, args.steps, args.repeats)}

    gaussian_mean, gaussian_std = torch.linspace(-0.5, 0.5, 64, dtype=torch.float64), 0.4

    def gaussian_denoiser(y, sigma):  # exact D for N(m, s²I): a cheap right-hand side, the solver's cost shows
        return gaussian_mean + gaussian_std**2 / (gaussian_std**2 + sigma[:, None] ** 2) * (y - gaussian_mean)

    data = gaussian_mean + gaussian_std * torch.randn(64, 64, dtype=torch.float64)
    digits = torch.rand(16, 1, 8, 8) * 2 - 1
    report["likelihood"] = [
        likelihood_comparison("gaussian, exact denoiser", gaussian_denoiser, data, max(3, args.repeats // 3)),
        likelihood_comparison("EDMPrecond(BenchNet), digits shape", denoiser, digits, 3),
    ]
    raw = save_raw(report_name(args.width), report)
    print(save_sampler_report(load_raw(raw)))


if __name__ == "__main__":
    main()
