"""What ``compile_training: true`` buys a shipped digits config's training step on the CPU, and what it costs.

    python3 benchmarks/diffusion_compile.py --rounds 20 --repeats 5 --threads 2 --note "..."
    python3 benchmarks/diffusion_compile.py --from-raw benchmarks/results/raw/diffusion_compile.json

Per config (``digits_ddpm``, ``digits_edm``, ``digits_edm2`` by default) the script builds the shipped
``DiffusionModule`` twice from the same seed, once as shipped and once with ``compile_training: true``, and
trains both on the same digits batches (the config's batch size; Adam on the trained parameters, the same for
both). It times

* the first compiled step in a fresh process with an empty inductor cache (a user's first run: tracing, C++
  code generation and compilation), then in a second fresh process that finds that cache filled (every later
  run);
* the first step at the epoch's smaller last batch (the batch dimension is compiled as dynamic, so this
  should not compile again);
* ``--rounds`` rounds of ``--repeats`` training steps of each module, the order alternating between rounds,
  so load from other processes hits both alike.

Ratios are of the medians over rounds, the spread the 10th–90th percentile of the per-round ratios. From the
medians and the compile times it derives the steps after which compiling pays back and the steps an
8-minute run (the digits configs' ``max_time``) takes either way. A config whose network does not compile is
reported with the error.

Writes the report benchmarks/results/diffusion_compile.json (rendered into docs/results.md) and the raw
timings to --out (default benchmarks/results/raw/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml

from pynodeta.train.configs import shipped_config_path
from pynodeta.train.run_loader import build_from_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import (  # noqa: E402
    RAW_DIR,
    Table,
    add_from_raw,
    load_raw,
    paired_timing_ratio,
    raw_machine,
    rebuilt_from_raw,
    save_raw,
    save_report,
)

NAME = "diffusion_compile"
TITLE = "compile_training on the CPU: a shipped digits config's training step compiled against eager"
CONFIGS = ("digits_ddpm", "digits_edm", "digits_edm2")
BUDGET_SECONDS = 480.0  # the digits configs' max_time


def build(config: str, compile_training: bool, directory: Path):
    """(module, data) of ``config`` as shipped, with ``compile_training`` set in its model section."""
    content = yaml.safe_load(shipped_config_path(config).read_text())
    content["model"]["init_args"]["compile_training"] = compile_training
    path = directory / f"{config}-{compile_training}.yaml"
    path.write_text(yaml.safe_dump(content))
    return build_from_config(path)


class Trainer:
    """Training steps of one module on fixed batches, through its own ``training_step``."""

    def __init__(self, module, batches: list[torch.Tensor]):
        self.module, self.batches = module.train(), batches
        self.optimizer = torch.optim.Adam(module.trained_parameters(), lr=1e-4)

    def step(self, batch: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.module.training_step(batch, 0).backward()
        self.optimizer.step()

    def timed_first_step(self, batch: torch.Tensor) -> float:
        start = time.perf_counter()
        self.step(batch)
        return time.perf_counter() - start

    def seconds_per_step(self, repeats: int) -> float:
        start = time.perf_counter()
        for index in range(repeats):
            self.step(self.batches[index % len(self.batches)])
        return (time.perf_counter() - start) / repeats


def first_batches(data) -> tuple[list[torch.Tensor], int]:
    """Four training batches of the config's data and the size of an epoch's last batch (0: none smaller)."""
    data.setup("fit")
    loader = data.train_dataloader()
    batches = [batch[0] if isinstance(batch, (list, tuple)) else batch for _, batch in zip(range(4), loader)]
    return batches, len(loader.dataset) % batches[0].shape[0]


def measure_config(config: str, args, directory: Path) -> dict:
    """A first run of ``config`` compiled (inductor's cache empty): the first compiled step, the first step at
    the last batch's size, then the alternated timing of compiled and eager steps."""
    eager_module, data = build(config, False, directory)
    compiled_module, _ = build(config, True, directory)
    batches, last = first_batches(data)
    eager, compiled = Trainer(eager_module, batches), Trainer(compiled_module, batches)
    try:
        cold = compiled.timed_first_step(batches[0])
    except RuntimeError as error:  # the network does not compile: report why
        return {"config": config, "error": str(error).splitlines()[0][:400]}
    last_batch = compiled.timed_first_step(batches[1][:last]) if last else None
    for _ in range(3):  # allocator and Adam state
        eager.step(batches[0])
        compiled.step(batches[0])
    timings = {"eager": [], "compiled": []}
    for round_index in range(args.rounds):
        order = ("eager", "compiled") if round_index % 2 == 0 else ("compiled", "eager")
        for name in order:
            timings[name].append({"eager": eager, "compiled": compiled}[name].seconds_per_step(args.repeats))
    return {"config": config, "batch": int(batches[0].shape[0]), "last_batch": last, "cold_compile_s": cold,
            "last_batch_first_step_s": last_batch, "timings": timings}


def measure_warm_start(config: str, directory: Path) -> dict:
    """A later run of ``config`` compiled (inductor's cache filled by the first): its first compiled step."""
    compiled_module, data = build(config, True, directory)
    batches, _ = first_batches(data)
    return {"warm_compile_s": Trainer(compiled_module, batches).timed_first_step(batches[0])}


def summary(record: dict) -> dict:
    paired = paired_timing_ratio(record["timings"]["compiled"], record["timings"]["eager"])
    e, c = paired["denominator"], paired["numerator"]
    saved = e - c

    def budget_steps(compile_seconds: float) -> float:
        return max(BUDGET_SECONDS - compile_seconds, 0.0) / c

    return {"eager": e, "compiled": c, "ratio": paired["ratio"], "p10": paired["p10"], "p90": paired["p90"],
            "payback_cold": record["cold_compile_s"] / saved if saved > 0 else float("inf"),
            "payback_warm": record["warm_compile_s"] / saved if saved > 0 else float("inf"),
            "steps_eager": BUDGET_SECONDS / e, "steps_cold": budget_steps(record["cold_compile_s"]),
            "steps_warm": budget_steps(record["warm_compile_s"])}


def compile_table(result: dict) -> Table:
    rows = []
    for record in result["records"]:
        if "error" in record:
            rows.append([record["config"], "does not compile: " + record["error"], *[""] * 7])
            continue
        s = summary(record)
        rows.append([record["config"], f"{1e3 * s['eager']:.1f}", f"{1e3 * s['compiled']:.1f}",
                     f"{s['ratio']:.2f} ({s['p10']:.2f}–{s['p90']:.2f})",
                     f"{record['cold_compile_s']:.0f} / {record['warm_compile_s']:.0f}",
                     "—" if record["last_batch_first_step_s"] is None else f"{record['last_batch_first_step_s']:.2f}",
                     f"{s['payback_cold']:.0f} / {s['payback_warm']:.0f}", f"{s['steps_eager']:.0f}",
                     f"{s['steps_cold']:.0f} / {s['steps_warm']:.0f}"])
    settings = result["settings"]
    caption = (f"median ms per training step (forward, backward, Adam) over {settings['rounds']} alternating rounds "
               f"of {settings['repeats']} steps, {settings['threads']} threads; compile times are the first compiled "
               "step, with an empty / a filled inductor cache; the 8-minute steps subtract that compile time")
    return Table(["config", "eager ms", "compiled ms", "compiled / eager (p10–p90)", "compile s, cold / warm",
                  "first step at the last batch size, s", "pays back after steps, cold / warm", "steps in 8 min, eager",
                  "steps in 8 min compiled, cold / warm"], rows, caption)


def save_compile_report(result: dict) -> Path:
    notes = ["Only the training loss's calls are compiled (dynamic batch dimension); evaluation, sampling and the "
             "weight averages run the eager network, so they never recompile."]
    if result.get("note"):
        notes.insert(0, result["note"])
    return save_report(NAME, TITLE, [compile_table(result)], notes=notes, command=result["command"],
                       machine=raw_machine(result, threads=result["settings"]["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=20, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=5, help="training steps per timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="how the machine was shared during the run")
    parser.add_argument("--out", default=str(RAW_DIR), help="directory of the raw JSON file")
    parser.add_argument("--one-config", nargs=2, metavar=("CONFIG", "RECORD"), help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    add_from_raw(parser, "measuring")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_compile_report):
        return
    if args.one_config:  # a child: one config, in a process of its own, its record to a file
        torch.set_num_threads(args.threads)
        warnings.filterwarnings("ignore", message="You are trying to `self.log")  # training_step outside a Trainer
        config, record_path = args.one_config
        directory = Path(record_path).parent
        record = measure_warm_start(config, directory) if args.warm else measure_config(config, args, directory)
        Path(record_path).write_text(json.dumps(record))
        return
    records = []
    for config in args.configs:
        # Each config in fresh processes with an inductor cache of its own, so nothing compiled before is
        # reused on disk or in memory: the first process is a user's first run of the config (cold), the
        # second a later run that finds the first one's cache (warm)
        with tempfile.TemporaryDirectory() as directory:
            environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(directory) / "inductor")}
            record = {}
            for phase in ("cold", "warm"):
                if phase == "warm" and "error" in record:
                    break
                path = Path(directory) / f"{phase}.json"
                command = [sys.executable, __file__, "--one-config", config, str(path), "--rounds", str(args.rounds),
                           "--repeats", str(args.repeats), "--threads", str(args.threads)]
                subprocess.run(command + (["--warm"] if phase == "warm" else []), check=True, env=environment)
                record.update(json.loads(path.read_text()))
            records.append(record)
        record = records[-1]
        if "error" in record:
            print(f"{config}: {record['error']}", flush=True)
            continue
        s = summary(record)
        print(f"{config}: eager {1e3 * s['eager']:.1f} ms, compiled {1e3 * s['compiled']:.1f} ms, ratio "
              f"{s['ratio']:.3f} ({s['p10']:.2f}–{s['p90']:.2f}); compile {record['cold_compile_s']:.1f} s cold, "
              f"{record['warm_compile_s']:.1f} s warm", flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "from_raw", "note", "one_config", "warm")}
    result = {"records": records, "note": args.note, "settings": settings}
    raw = save_raw(NAME, result, args.out)
    print(f"wrote {raw} and {save_compile_report(load_raw(raw))}")


if __name__ == "__main__":
    main()
