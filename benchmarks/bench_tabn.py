"""TA-BN against torch.nn.BatchNorm2d: forward + backward time, train and eval mode.

    PYTHONPATH=. python3 benchmarks/bench_tabn.py [--repeats 30] [--threads 2]

Prints and saves (benchmarks/results/bench_tabn.json) median times (ms) and the ratios
TA-BN / BatchNorm2d (target <= 1.3).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pynodeta.nn import TABatchNorm2d

from make_results import render_table
from reporting import Table, save_report


def fwd_bwd_ms(call, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Wall time (ms) of one forward + backward."""
    x.grad = None
    start = time.perf_counter()
    call(x).backward(grad)
    return (time.perf_counter() - start) * 1e3


def compare(reference, candidate, x, grad, repeats: int, warmup: int = 5) -> tuple[list[float], list[float]]:
    """Times (ms) of two calls, alternated run by run so that drifting load hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + repeats):
        for samples, call in zip(times, (reference, candidate), strict=True):
            ms = fwd_bwd_ms(call, x, grad)
            if i >= warmup:
                samples.append(ms)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=4, default=[256, 64, 16, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(*args.shape, requires_grad=True)
    grad = torch.randn(*args.shape)
    channels = args.shape[1]
    bn, tabn = torch.nn.BatchNorm2d(channels), TABatchNorm2d(channels, M=100, T=1.0)
    rows = []
    for mode in ("train", "eval"):
        bn.train(mode == "train")
        tabn.train(mode == "train")
        ref, ta = compare(bn, lambda x: tabn(0.4137, x), x, grad, args.repeats)
        rows.append((mode, statistics.median(ref), statistics.median(ta), min(ref), min(ta)))
    caption = (f"forward+backward, input {tuple(args.shape)}, {args.threads} threads, "
               f"{args.repeats} alternated runs each")
    # The minimum is the least disturbed by other processes; the median is the typical cost.
    result = Table(["mode", "BatchNorm2d, median ms", "TABatchNorm2d, median ms", "ratio of medians",
                    "ratio of minima"],
                   [[mode, round(ref, 2), round(ta, 2), round(ta / ref, 2), round(ta_min / ref_min, 2)]
                    for mode, ref, ta, ref_min, ta_min in rows], caption=caption)
    save_report("bench_tabn", "TA-BN against BatchNorm2d: time per forward+backward", [result],
                notes=["Target: ratio <= 1.3."])
    print(render_table(result))


if __name__ == "__main__":
    main()
