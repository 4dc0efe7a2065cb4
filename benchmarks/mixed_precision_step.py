"""Training-step time of digits_edm2's network under bf16 autocast (what ``--trainer.precision bf16-mixed`` runs
on a CPU) against float32, on this machine's CPU.

    PYTHONPATH=. python3 benchmarks/mixed_precision_step.py [--steps 40] [--threads 1] [--batch 64]

One step = EDM2's loss on one batch (the shipped config's network, objective and batch size), backward and an
Adam (0.9, 0.99) step. The two precisions alternate step by step in one process (after a few warm-up steps of
each), so that a neighbour's load on a shared machine falls on both alike; times are CPU seconds of this
process (``time.process_time``). Reports the medians and the ratio bf16/fp32 of the paired steps' times.
Saves benchmarks/results/mixed_precision_step.json (rendered into docs/results.md) and the raw measurements under
results/raw/; ``--from-raw FILE`` rebuilds the report from them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from pynodeta.models.diffusion import EDM2UNet
from pynodeta.train import DiffusionModule, EDM2Objective, shipped_config_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import Table, add_from_raw, load_raw, raw_machine, rebuilt_from_raw, save_raw, save_report  # noqa: E402

NAME = "mixed_precision_step"


def shipped_edm2() -> tuple[DiffusionModule, int]:
    """digits_edm2's DiffusionModule (network and objective as shipped) and its batch size."""
    config = yaml.safe_load(shipped_config_path("digits_edm2").read_text())
    model = config["model"]["init_args"]
    net = EDM2UNet(**model["model"]["init_args"])
    objective = EDM2Objective(**model["objective"]["init_args"])
    return DiffusionModule(net, objective, averaging="none"), int(config["data"]["init_args"]["batch_size"])


def bf16_instructions() -> list[str]:
    """The CPU's native bf16 instruction sets (Linux): without them bf16 arithmetic is emulated, and slower."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def step_seconds(module: DiffusionModule, optimizer, x0: torch.Tensor, bf16: bool) -> float:
    start = time.process_time()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = module.objective.loss(module.model, x0).mean()
    loss.backward()
    optimizer.step()
    return time.process_time() - start


def save_precision_report(raw: dict) -> Path:
    medians = raw["median_seconds"]
    table = Table(["precision", "median ms per step", "ratio to float32 (median of paired steps)"],
                  [["float32", medians["fp32"] * 1e3, 1.0],
                   ["bf16 autocast", medians["bf16"] * 1e3, raw["median_ratio_bf16_over_fp32"]]],
                  caption=f"digits_edm2's network and EDM2 loss, batch {raw['batch_size']}, Adam; "
                          f"{raw['steps_per_precision']} timed steps of each, alternated in one process, CPU seconds")
    notes = [f"CPU capability {raw['cpu_capability']}; bf16 instructions: "
             f"{', '.join(raw['bf16_instructions']) or 'none'} (without them bf16 is emulated and may be slower).",
             raw.get("machine_note", "")]
    return save_report(NAME, "Mixed precision on the CPU: a bf16-autocast training step against float32", [table],
                       notes=[note for note in notes if note], command=raw["command"],
                       machine=raw_machine(raw, threads=raw["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each precision (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each precision first (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's, 64)")
    parser.add_argument("--machine-note", default="", help="how the machine was shared during the run")
    add_from_raw(parser, "measuring")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_precision_report):
        return
    for name in ("steps", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module, batch = shipped_edm2()
    batch = args.batch or batch
    module.train()
    optimizer = torch.optim.Adam(module.trained_parameters(), lr=1e-3, betas=(0.9, 0.99))
    x0 = torch.rand(batch, *module.sample_shape) * 2 - 1  # timing does not depend on the pixel values
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for index in range(args.warmup + args.steps):
        for name in (("fp32", "bf16") if index % 2 == 0 else ("bf16", "fp32")):  # alternate which goes first
            seconds = step_seconds(module, optimizer, x0, bf16=name == "bf16")
            if index >= args.warmup:
                times[name].append(seconds)
    ratios = [b / f for b, f in zip(times["bf16"], times["fp32"])]
    raw = {"batch_size": batch, "threads": args.threads, "machine_note": args.machine_note,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_instructions": bf16_instructions(),
           "parameters": sum(p.numel() for p in module.trained_parameters()), "steps_per_precision": args.steps,
           "median_seconds": {name: statistics.median(values) for name, values in times.items()},
           "median_ratio_bf16_over_fp32": statistics.median(ratios), "seconds": times}
    path = save_precision_report(load_raw(save_raw(NAME, raw)))
    medians = raw["median_seconds"]
    print(f"fp32 {medians['fp32'] * 1e3:.1f} ms/step, bf16 {medians['bf16'] * 1e3:.1f} ms/step, "
          f"median ratio bf16/fp32 {raw['median_ratio_bf16_over_fp32']:.2f} -> {path}")


if __name__ == "__main__":
    main()
