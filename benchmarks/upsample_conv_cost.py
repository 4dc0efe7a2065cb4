"""A 3×3 convolution of a 2× nearest-upsampled image: computed at the input's resolution (the phase kernels of
``pynodeta.nn.upsample_conv``) against upsampling first and convolving the large image, on one thread.

    python3 benchmarks/upsample_conv_cost.py --rounds 24 --note "..."
    python3 benchmarks/upsample_conv_cost.py --from-raw benchmarks/results/raw/upsample_conv_cost.json

"Upsampled first" is what EDM2's up block did before (``resample(x, 'up')``, a depthwise transposed
convolution, then the 3×3 convolution); DDPM's ``Upsample`` used ``F.interpolate``, which is slower still. Per
shape (batch 128, C → C channels, input H×H) the script times, in alternating order within each round, an
eval call under ``torch.no_grad`` and a forward + backward of both forms on the same tensors; each form's
share of a round is its thread CPU time (``time.thread_time``). Reported: the median over rounds of the
per-round ratio, with its 10th–90th percentiles.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pynodeta.nn.mp import resample
from pynodeta.nn.upsample_conv import conv3x3_of_upsampled

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import RAW_DIR, Table, add_from_raw, load_raw, raw_machine, rebuilt_from_raw, save_raw, save_report  # noqa: E402

NAME = "upsample_conv_cost"
TITLE = "A 3×3 convolution after 2× nearest upsampling: at the input's resolution against upsampling first"
SHAPES = ("32@8", "64@4", "64@8", "128@8", "256@4", "32@16", "128@16")  # channels@input size


def upsampled_first(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(resample(x, "up"), weight, padding=1)


def ratios(channels: int, size: int, batch: int, rounds: int, seed: int) -> dict[str, list[float]]:
    """Per round, the phase form's CPU time over the upsampled-first form's, for an eval call and fwd+bwd."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=generator)
    weight = torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels ** 0.5)
    x_grad, weight_grad = x.clone().requires_grad_(), weight.clone().requires_grad_()
    forms = {"phases": conv3x3_of_upsampled, "upsampled first": upsampled_first}

    def eval_call(form):
        with torch.no_grad():
            form(x, weight)

    def forward_backward(form):
        form(x_grad, weight_grad).sum().backward()

    result = {}
    for mode, call in (("eval", eval_call), ("fwd+bwd", forward_backward)):
        for form in forms.values():  # warm-up
            call(form)
            call(form)
        per_round = []
        for round_index in range(rounds):
            seconds = {}
            for name in (list(forms) if round_index % 2 == 0 else list(forms)[::-1]):
                started = time.thread_time()
                call(forms[name])
                seconds[name] = time.thread_time() - started
            per_round.append(seconds["phases"] / seconds["upsampled first"])
        result[mode] = per_round
    return result


def cost_table(result: dict) -> Table:
    rows = []
    for shape, measured in result["shapes"].items():
        channels, size = shape.split("@")
        flops = 16 * (int(size) + 1) ** 2 / (36 * int(size) ** 2)
        cells = [f"{np.median(measured[m]):.2f} ({np.percentile(measured[m], 10):.2f}–"
                 f"{np.percentile(measured[m], 90):.2f})" for m in ("eval", "fwd+bwd")]
        rows.append([channels, f"{size}×{size} → {2 * int(size)}×{2 * int(size)}", f"{flops:.2f}", *cells])
    settings = result["settings"]
    return Table(["channels", "image", "multiplies, phases / upsampled", "eval call: time ratio (p10–p90)",
                  "forward + backward: time ratio (p10–p90)"], rows,
                 caption=f"batch {settings['batch']}, one thread, median over {settings['rounds']} alternating rounds "
                         f"of the per-round ratio (phases / upsampled first; below 1: the phase form is faster)")


def save_cost_report(result: dict) -> Path:
    notes = [result["note"]] if result.get("note") else []
    return save_report(NAME, TITLE, [cost_table(result)], notes=notes, command=result["command"],
                       machine=raw_machine(result, threads=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="channels@input size, e.g. 64@8")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="how the machine was shared during the run")
    parser.add_argument("--out", default=str(RAW_DIR), help="directory of the raw JSON file")
    add_from_raw(parser, "measuring")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_cost_report):
        return
    torch.set_num_threads(1)
    shapes = {}
    for shape in args.shapes:
        try:
            channels, size = map(int, shape.split("@"))
        except ValueError:
            parser.error(f"--shapes takes channels@input size such as 64@8, got {shape!r}")
        shapes[shape] = ratios(channels, size, args.batch, args.rounds, args.seed)
        print(shape, {m: round(float(np.median(v)), 3) for m, v in shapes[shape].items()}, flush=True)
    result = {"shapes": shapes, "note": args.note,
              "settings": {"batch": args.batch, "rounds": args.rounds, "seed": args.seed}}
    raw = save_raw(NAME, result, args.out)
    print(f"wrote {raw} and {save_cost_report(load_raw(raw))}")


if __name__ == "__main__":
    main()
