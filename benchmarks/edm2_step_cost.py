"""What an EDM2UNet costs against a DDPMUNet of equal width and parameter count, on one thread.

    nice -n 10 python3 benchmarks/edm2_step_cost.py --rounds 40 --repeats 3 --note "..."
    python3 benchmarks/edm2_step_cost.py --from-raw benchmarks/results/raw/edm2_step_cost.json

The two networks have equal widths and about 720k parameters each: ``digits_edm2``'s EDM2 U-Net (32
channels, levels 8×8 and 4×4, one block per level, attention at 4×4) and a DDPM U-Net of the same layout
(GroupNorm with 8 groups, no positional timestep maps, which would add 65k parameters). Both take the same
8×8×1 batch and the same bare objective (mean squared error to a fixed target, Adam), so the figures
compare the networks, not their losses. Per round the script times, in turn, ``--repeats`` training
steps (forward, backward, optimiser step) of each network, then ``--repeats`` eval-mode calls under
``torch.no_grad()`` of each; the order within a round alternates between rounds, so load from other
processes on a shared machine hits both networks alike. Each timing is taken on two clocks, wall time
and the thread's CPU time (which leaves out time given to other processes). Ratios are of the medians
over rounds; the spread is the 10th–90th percentile of the per-round ratios.

Writes the report benchmarks/results/edm2_step_cost.json (rendered into docs/results.md) and the raw
timings to --out (default benchmarks/results/raw/).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from pynodeta.models.diffusion import DDPMUNet, EDM2UNet

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

NAME = "edm2_step_cost"
TITLE = "EDM2UNet against DDPMUNet: cost of a training step and of an eval-mode call"
CLOCKS = ("wall", "cpu")


def build_networks(width: int, seed: int) -> dict[str, torch.nn.Module]:
    """The digits_edm2 U-Net and a DDPM U-Net of its widths and parameter count at ``width`` channels."""
    torch.manual_seed(seed)
    edm2 = EDM2UNet(8, 1, model_channels=width, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                    channels_per_head=32)
    ddpm = DDPMUNet(image_size=8, in_channels=1, channels=width, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(4,), dropout=0.0, norm_groups=8)
    return {"edm2": edm2, "ddpm": ddpm}


class Workload:
    """A training step and an eval-mode call of one network on fixed inputs."""

    def __init__(self, net: torch.nn.Module, t: torch.Tensor, x: torch.Tensor, target: torch.Tensor):
        self.net, self.t, self.x, self.target = net, t, x, target
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def train_step(self) -> None:
        self.net.train()
        loss = (self.net(self.t, self.x) - self.target).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def eval_call(self) -> None:
        self.net.eval()
        with torch.no_grad():
            self.net(self.t, self.x)


def seconds_per_call(function, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call; the CPU time of this thread leaves out the time the scheduler gave to
    other processes, which wall time on a shared machine includes."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(count):
        function()
    return (time.perf_counter() - wall) / count, (time.thread_time() - cpu) / count


def measure(args) -> dict:
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 1, 8, 8, generator=generator)
    target = torch.randn(args.batch, 1, 8, 8, generator=generator)
    c_noise = torch.randn(args.batch, generator=generator) / 4  # EDM2's ln(σ)/4 scale
    timesteps = torch.randint(1000, (args.batch,), generator=generator)  # DDPM's integer timesteps
    nets = build_networks(args.width, args.seed)
    work = {"edm2": Workload(nets["edm2"], c_noise, x, target), "ddpm": Workload(nets["ddpm"], timesteps, x, target)}
    for w in work.values():  # warm-up: allocator, Adam state, first-call overheads
        for _ in range(3):
            w.train_step()
            w.eval_call()
    timings = {f"{net}_{what}_{clock}": [] for what in ("train", "eval") for net in work for clock in CLOCKS}
    for round_index in range(args.rounds):
        order = ["edm2", "ddpm"] if round_index % 2 == 0 else ["ddpm", "edm2"]
        for what in ("train", "eval"):
            for net in order:
                method = work[net].train_step if what == "train" else work[net].eval_call
                for clock, seconds in zip(CLOCKS, seconds_per_call(method, args.repeats)):
                    timings[f"{net}_{what}_{clock}"].append(seconds)
    return {"timings": timings,
            "parameters": {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()},
            "multiply_adds": {name: eval_multiply_adds(w) for name, w in work.items()}}


def eval_multiply_adds(work: Workload) -> int:
    """Multiply-adds of one eval-mode call in its convolutions and matrix products (torch.utils.flop_counter
    counts two FLOPs per multiply-add): the work no element-wise fast path can remove."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work.eval_call()
    return counter.get_total_flops() // 2


LABELS = {"train": "training step (forward, backward, Adam)", "eval": "eval-mode call (no_grad)"}


def summary(result: dict) -> list[dict]:
    """Per mode and clock: median seconds of each network, the ratio of the medians, and the 10th and 90th
    percentiles of the per-round ratios."""
    rows = []
    for what in ("train", "eval"):
        for clock in CLOCKS:
            paired = paired_timing_ratio(result["timings"][f"edm2_{what}_{clock}"],
                                         result["timings"][f"ddpm_{what}_{clock}"])
            rows.append({"what": what, "clock": clock, "edm2": paired.pop("numerator"),
                         "ddpm": paired.pop("denominator"), **paired})
    return rows


def cost_table(result: dict) -> Table:
    rows = [[LABELS[s["what"]], s["clock"], f"{1e3 * s['edm2']:.1f}", f"{1e3 * s['ddpm']:.1f}", f"{s['ratio']:.2f}",
             f"{s['p10']:.2f}–{s['p90']:.2f}"] for s in summary(result)]
    settings = result["settings"]
    caption = (f"batch {settings['batch']} of 8×8×1, width {settings['width']}, parameters EDM2 "
               f"{result['parameters']['edm2']} / DDPM {result['parameters']['ddpm']}; median ms per call over "
               f"{settings['rounds']} alternating rounds of {settings['repeats']} calls")
    return Table(["what", "clock", "EDM2UNet ms", "DDPMUNet ms", "EDM2 / DDPM", "per-round ratio p10–p90"], rows,
                 caption)


def save_cost_report(result: dict) -> Path:
    notes = ["Ratios come from rounds alternating the two networks in one process, so load from other "
             "processes on the machine hits both alike; the p10–p90 column shows how much it moved them. "
             "'cpu' is this thread's CPU time (time.thread_time), which leaves out time the scheduler gave to "
             "other processes; 'wall' includes it."]
    macs = result.get("multiply_adds")
    if macs:  # runs before this count was kept have none
        notes.append(f"Multiply-adds of an eval-mode call in convolutions and matrix products "
                     f"(torch.utils.flop_counter): EDM2 {macs['edm2'] / 1e6:.0f} M, DDPM {macs['ddpm'] / 1e6:.0f} M, "
                     f"{macs['edm2'] / macs['ddpm']:.2f}×; at equal speed per multiply-add this much of the "
                     "EDM2 / DDPM ratio is arithmetic that the layout asks for, not overhead.")
    if result.get("note"):
        notes.insert(0, result["note"])
    name, label = result.get("name", NAME), result.get("label", "")
    return save_report(name, f"{TITLE}: {label}" if label else TITLE, [cost_table(result)], notes=notes,
                       command=result["command"],
                       machine=raw_machine(result, threads=result["settings"]["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=40, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=3, help="calls per timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="how the machine was shared during the run")
    parser.add_argument("--name", default=NAME, help="report name (e.g. edm2_step_cost_before for a baseline run)")
    parser.add_argument("--label", default="", help="what this run measured, appended to the report's title")
    parser.add_argument("--out", default=str(RAW_DIR), help="directory of the raw JSON file")
    add_from_raw(parser, "measuring")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_cost_report):
        return
    torch.set_num_threads(args.threads)
    result = measure(args)
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "from_raw", "note", "name", "label")}
    result.update(note=args.note, name=args.name, label=args.label)
    for s in summary(result):
        print(f"{s['what']} ({s['clock']}): EDM2 {1e3 * s['edm2']:.1f} ms, DDPM {1e3 * s['ddpm']:.1f} ms, "
              f"ratio {s['ratio']:.3f} (p10–p90 {s['p10']:.2f}–{s['p90']:.2f})", flush=True)
    raw = save_raw(args.name, result, args.out)  # adds the command and the machine facts
    print(f"wrote {raw} and {save_cost_report(load_raw(raw))}")


if __name__ == "__main__":
    main()
