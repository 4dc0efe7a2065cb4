"""A sampling run's checks on a GPU: read once at the end of the run (pynodeta) against read per denoiser call
(as before) and against the network's calls alone, on the shipped digits configs' networks and samplers.

Reading a value of a GPU tensor back to the host waits for every queued kernel. A check per denoiser call
(σ > 0, σ inside a DDPM schedule's range, a finite output) keeps the host from queueing the next call while the
GPU runs this one. pynodeta's samplers now know their σ on the host and fold the outputs' finiteness into
flags on the device, read once when the run ends. Contenders, alternated in one process (the order rotating
from round to round), each run ending with a device synchronisation:
  pynodeta          the config's evaluation sampler and steps, as ``pynodeta sample`` runs them
  checks per call   the same run as earlier versions made it: every call reads its σ's checks and its output's
                    finiteness back, and fresh noise reaches the GPU by a copy the host waits for
  network alone     the run's denoiser calls, recorded and made back to back: no sampler, no checks

    python3 benchmarks/sampling_syncs.py --device cuda --repeats 11
    python3 benchmarks/sampling_syncs.py --device cpu --repeats 1 --batches 4   # a self-check of the script

On the CPU both checked paths read per call (a read costs nothing there), so a CPU run measures nothing and
writes into a temporary folder unless ``--results-dir`` is given. The report goes to
benchmarks/results/sampling_syncs_cuda.json (rendered into docs/results.md), the raw record to results/raw/;
``--from-raw FILE`` rebuilds the report.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from pynodeta import _host_copies, _random
from pynodeta.diffusion import SAMPLERS, _known_sigmas
from pynodeta.diffusion.sampler_options import split_grid_options
from pynodeta.train.configs import shipped_config_path
from pynodeta.train.run_loader import build_from_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import (  # noqa: E402
    RESULTS_DIR,
    Table,
    add_from_raw,
    device_record,
    rebuilt_from_raw,
    save_device_report,
    save_device_run,
    timed_on,
)

CONFIGS = ("digits_edm2", "digits_ddpm")
CONTENDERS = ("pynodeta", "checks per call", "network alone")


@contextlib.contextmanager
def checks_per_call() -> Iterator[None]:
    """The run as earlier versions made it: each output checked as it comes, each σ read back, fresh noise from
    a CPU generator copied to the device by a copy the host waits for."""
    saved = _host_copies.reads_wait_for, _random.to_device
    _host_copies.reads_wait_for = lambda tensor: False  # the CPU's path: no σ carries its bounds
    _random.to_device = lambda host, device: host.to(device)
    try:
        yield
    finally:
        _host_copies.reads_wait_for, _random.to_device = saved


class Run:
    """One config's sampling run on ``batch`` images: its denoiser, sampler, noise levels and initial noise."""

    def __init__(self, config: str, batch: int, device: torch.device):
        module, _ = build_from_config(shipped_config_path(config))
        module = module.to(device).eval()
        settings = module.evaluation
        grid, self.options = split_grid_options(settings.sampler_options or {})
        self.sampler, self.steps = settings.sampler, settings.steps
        self.sigmas = module.objective.sampling_sigmas(module.model, self.sampler, self.steps, **grid)
        self.denoiser = module.denoiser()
        noise = torch.randn(batch, *module.sample_shape, generator=torch.Generator().manual_seed(0))
        self.x = (noise * module.objective.prior_scale(self.sampler, self.sigmas)).to(device)
        self.calls: list[tuple[torch.Tensor, float]] = []

    @torch.no_grad()
    def sample(self, record: bool = False) -> torch.Tensor:
        return SAMPLERS[self.sampler](self._recording if record else self.denoiser, self.x, self.sigmas,
                                      generator=torch.Generator().manual_seed(1), disable=True, **self.options)

    def _recording(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        # each call's σ is one sampler level: kept with its bounds known, as a sampler hands it over
        self.calls.append((x.clone(), _known_sigmas.sigma_levels(float(sigma[0]), x)))
        return self.denoiser(x, sigma, **kwargs)

    @torch.no_grad()
    def network_alone(self) -> None:
        for x, sigma in self.calls:
            self.denoiser(x, sigma)

    def record(self) -> int:
        """Record one run's calls (also the warm-up); their number, the NFE."""
        self.sample(record=True)
        return len(self.calls)


def measure(config: str, batch: int, device: torch.device, repeats: int) -> dict:
    run = Run(config, batch, device)
    nfe = run.record()
    with checks_per_call():
        run.sample()  # its warm-up
    work = {"pynodeta": run.sample, "network alone": run.network_alone}

    def per_call() -> None:
        with checks_per_call():
            run.sample()

    work["checks per call"] = per_call
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for repeat in range(repeats):
        shift = repeat % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            times[name].append(timed_on(device, work[name]))
    return dict(config=config, batch=batch, sampler=run.sampler, steps=run.steps, nfe=nfe,
                median_s={name: statistics.median(values) for name, values in times.items()})


def save_sampling_syncs_report(raw: dict, directory: Path = RESULTS_DIR) -> Path:
    rows = []
    for r in raw["rows"]:
        m = r["median_s"]
        rows.append([r["config"], r["batch"], f"{r['sampler']}, {r['steps']} steps", r["nfe"],
                     *(m[name] * 1e3 for name in CONTENDERS), m["checks per call"] / m["pynodeta"],
                     m["pynodeta"] / m["network alone"]])
    table = Table(["config", "batch", "sampler", "NFE", *(f"{name} ms" for name in CONTENDERS),
                   "per call / pynodeta", "pynodeta / network alone"], rows,
                  f"median wall time of one sampling run over {raw['repeats']} rotated rounds, each ending with a "
                  "device synchronisation")
    notes = [
        "All contenders run in one process, their order rotating from round to round, so they see the same load.",
        "pynodeta: the config's evaluation sampler, steps and noise levels (untrained weights: the cost of a call "
        "does not depend on them), with its checks read once when the run ends. checks per call: the same run "
        "reading each σ check and each output's finiteness back to the host per call and copying fresh noise to the "
        "device by a copy the host waits for, as earlier versions did. "
        "network alone: the run's denoiser calls, recorded, made back to back.",
    ]
    if raw.get("device", "cpu") == "cpu":
        notes.insert(0, "A self-check on the CPU, where both checked paths read per call: these times measure "
                        "nothing.")
    return save_device_report("sampling_syncs", "A sampling run's checks read once at its end against read per "
                              "denoiser call, and the network alone", [table], notes, raw, directory)


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--note", default=None, help="a note on the run (e.g. the machine's load) for the report")
    add_from_raw(parser, "measuring")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1000],
                        help="images per run (the digits race draws 1000)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--results-dir", type=Path, default=None, help="where the report and raw/ go")
    args = parser.parse_args(argv)
    if rebuilt_from_raw(args, lambda raw: save_sampling_syncs_report(raw, args.results_dir or RESULTS_DIR)):
        return None
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    for config in args.configs:
        for batch in args.batches:
            rows.append(measure(config, batch, device, args.repeats))
            print(rows[-1], flush=True)
    directory = args.results_dir or (Path(tempfile.mkdtemp(prefix="sampling_syncs_")) if device.type == "cpu"
                                     else RESULTS_DIR)
    record = dict(torch=torch.__version__, repeats=args.repeats, rows=rows, note=args.note,
                  **device_record(args.device))
    return save_device_run("sampling_syncs", record, directory, save_sampling_syncs_report)


if __name__ == "__main__":
    main()
