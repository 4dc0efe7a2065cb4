"""Training throughput of digits_edm2 under DDP on the CPU: one process against two gloo processes at the same
global batch, each layout run the way Lightning runs it (``Trainer(strategy="ddp")``, one process per rank).

    PYTHONPATH=. python3 benchmarks/ddp_scaling.py [--steps 100] [--warmup 20] [--rounds 3] [--batch 64]

Layouts, alternated round by round so that a change in the machine's load hits all of them alike:
one process with 1 thread, one process with 2 threads, and two ranks with 1 thread each and half the batch
per rank (the same global batch, so the same optimisation). Each run builds the config's network, objective
and optimiser (``build_from_config``), tracks the power-function EMA without snapshots and times ``--steps``
optimiser steps after ``--warmup`` on rank 0 (wall time; the ranks step together). Images per second are the
global batch times steps over that time. Saves benchmarks/results/ddp_scaling.json and the raw measurements
under results/raw/; ``--from-raw FILE`` rebuilds the report from them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from pynodeta.train.evaluation_ranks import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import Table, add_from_raw, load_raw, raw_machine, rebuilt_from_raw, save_raw, save_report  # noqa: E402

NAME = "ddp_scaling"
CONFIG = ROOT / "pynodeta" / "configs" / "digits_edm2.yaml"
LAYOUTS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 gloo ranks, 1 thread each", 2, 1))


def _rank(rank: int, world: int, threads: int, batch: int, warmup: int, steps: int, port: int, out: str) -> None:
    import lightning
    import yaml

    from pynodeta.train.ema_callback import PowerFunctionEMACallback
    from pynodeta.train.run_loader import build_from_config

    # the environment torchrun sets: Lightning joins it instead of launching processes of its own
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(threads)
    content = yaml.safe_load(CONFIG.read_text())
    content["data"]["init_args"]["batch_size"] = batch // world
    content["model"]["init_args"]["evaluation"].update(every_n_epochs=0)
    config = Path(out).with_suffix(f".{rank}.yaml")
    config.write_text(yaml.safe_dump(content))
    module, data = build_from_config(config)
    module.on_fit_end = lambda: None  # the final evaluation is not what is timed

    class StepTimer(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == warmup:
                self.start = time.perf_counter()
            elif trainer.global_step == warmup + steps and trainer.is_global_zero:
                Path(out).write_text(str(time.perf_counter() - self.start))

    trainer = lightning.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                                max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                limit_val_batches=0, callbacks=[StepTimer(), PowerFunctionEMACallback()])
    trainer.fit(module, datamodule=data)


def _run(world: int, threads: int, batch: int, warmup: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "seconds")
        if world == 1:
            context = mp.get_context("spawn")  # a fresh process like the ranks': no state from earlier layouts
            process = context.Process(target=_rank, args=(0, 1, threads, batch, warmup, steps, free_port(), out))
            process.start()
            process.join()
        else:
            mp.spawn(_rank, args=(world, threads, batch, warmup, steps, free_port(), out), nprocs=world)
        return batch * steps / float(Path(out).read_text())


def measure(steps: int, warmup: int, rounds: int, batch: int) -> dict:
    images_per_second = {name: [] for name, _, _ in LAYOUTS}
    for round_index in range(rounds):
        for name, world, threads in LAYOUTS:
            images_per_second[name].append(_run(world, threads, batch, warmup, steps))
            print(f"round {round_index + 1}: {name}: {images_per_second[name][-1]:.0f} images/s", flush=True)
    return {"steps": steps, "warmup": warmup, "rounds": rounds, "batch": batch, "cpus": os.cpu_count(),
            "images_per_second": images_per_second}


def save_scaling_report(raw: dict) -> Path:
    reference = statistics.median(raw["images_per_second"][LAYOUTS[0][0]])
    rows = []
    for name, world, _threads in LAYOUTS:
        values = raw["images_per_second"][name]
        median = statistics.median(values)
        rows.append([name, raw["batch"] // world, median, min(values), max(values), median / reference])
    table = Table(["layout", "batch per rank", "images/s (median)", "min", "max", "× 1 process, 1 thread"], rows,
                  caption=f"digits_edm2's network, objective and optimiser, global batch {raw['batch']}, "
                          f"{raw['steps']} timed optimiser steps after {raw['warmup']}, {raw['rounds']} alternated "
                          f"rounds, on {raw['cpus']} CPU cores")
    notes = ["Wall time of rank 0 between the end of the warm-up step and the last timed step; two ranks step "
             "together (the gradient all-reduce waits for both). The spread between rounds is in the min/max "
             "columns.", raw.get("machine_note", "")]
    return save_report(NAME, "Data-parallel training on the CPU: one process against two gloo ranks", [table],
                       notes=[note for note in notes if note], command=raw["command"], machine=raw_machine(raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="global batch (split over the ranks)")
    parser.add_argument("--machine-note", default="", help="how the machine was shared during the run")
    add_from_raw(parser, "measuring")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_scaling_report):
        return
    raw = {**measure(args.steps, args.warmup, args.rounds, args.batch), "machine_note": args.machine_note}
    save_raw(NAME, raw)
    print(save_scaling_report(load_raw(Path(__file__).resolve().parent / "results" / "raw" / f"{NAME}.json")))


if __name__ == "__main__":
    main()
