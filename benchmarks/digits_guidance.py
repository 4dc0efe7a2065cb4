"""Classifier-free guidance on a class-conditional digits run: FD and class accuracy over the guidance weight.

    pynodeta fit --config digits_edm2_cond
    python3 benchmarks/digits_guidance.py --checkpoint runs/digits_edm2_cond/version_0/checkpoints/last.ckpt

For each w in ``--guidance`` the run (with the weights fit evaluated with) draws every digit in turn,
``--num`` images in all, from the same noise, and is scored as ``pynodeta evaluate`` scores it: FD over all
images against the test images beside the real-data floor, FD of each digit against that digit's test
images, and the class accuracy (how often the digits classifier, 97 % accurate on real test digits, names
the digit asked for). Writes benchmarks/results/digits_guidance.json (rendered into docs/results.md) and a
plot of the trade-off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from pynodeta.train import load_run
from pynodeta.train.diffusion_evaluation import evaluate_samples

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import (  # noqa: E402
    RESULTS_DIR,
    Table,
    add_from_raw,
    load_raw,
    raw_machine,
    rebuilt_from_raw,
    save_raw,
    save_report,
)


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    run = load_run(args.checkpoint)
    weights = run.describe(run.use_average(None))
    module, data = run.module.eval(), run.datamodule
    if module.num_classes is None:
        raise SystemExit(f"{args.checkpoint}: the run's network has no classes; train digits_edm2_cond first")
    data.setup("test")
    rows = []
    for guidance in args.guidance:
        result = evaluate_samples(module, RESULTS_DIR / f"digits_guidance_w{guidance:g}.png", data, num=args.num,
                                  class_labels="all", guidance=guidance)
        per_class = list(result["fd_per_class"].values())
        rows.append({"guidance": guidance, "fd": result["fd"], "fd_floor": result["fd_floor"],
                     "fd_ratio": result["fd_ratio"], "fd_per_class": result["fd_per_class"],
                     "fd_per_class_mean": statistics.fmean(per_class), "accuracy": result["conditional_accuracy"],
                     "nfe": result["sampler_nfe"], "seconds": result["sampling_seconds"]})
        print(f"w = {guidance:g}: FD {result['fd']:.3f} ({result['fd_ratio']:.2f}x floor), "
              f"class accuracy {result['conditional_accuracy']:.3f}", flush=True)
    return {"run_step": run.step, "weights": weights, "sampler": module.evaluation.sampler,
            "steps": module.evaluation.steps, "num": args.num, "threads": args.threads, "rows": rows}


def plot(raw: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = raw["rows"]
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ax.plot([r["accuracy"] for r in rows], [r["fd_ratio"] for r in rows], "o-", color="tab:blue")
    for r in rows:
        ax.annotate(f"w={r['guidance']:g}", (r["accuracy"], r["fd_ratio"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("class accuracy (digits classifier)")
    ax.set_ylabel("FD / real-data floor (all classes)")
    ax.set_title("classifier-free guidance, digits_edm2_cond")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def save_guidance_report(raw: dict) -> Path:
    table = Table(["guidance w", "FD", "FD / floor", "mean per-class FD", "class accuracy", "NFE", "sampling s"],
                  [[r["guidance"], r["fd"], r["fd_ratio"], r["fd_per_class_mean"], r["accuracy"], r["nfe"],
                    r["seconds"]] for r in raw["rows"]],
                  f"{raw['num']} images, every digit in turn, one noise draw for all w; {raw['sampler']} with "
                  f"{raw['steps']} levels (a guided evaluation runs the network on a doubled batch), weights: "
                  f"{raw['weights']}, step {raw['run_step']}")
    classes = sorted(raw["rows"][0]["fd_per_class"], key=int)
    per_class = Table(["guidance w", *[f"digit {c}" for c in classes]],
                      [[r["guidance"], *[r["fd_per_class"][c] for c in classes]] for r in raw["rows"]],
                      "FD of each digit's samples against that digit's test images (about 36 of each)")
    grids = [f"digits_guidance_w{r['guidance']:g}.png" for r in raw["rows"]]
    notes = ["FD per class compares about 50 samples with about 36 test images in 64 features, which biases it "
             "upwards; compare it across w, not with the all-class FD.",
             f"Sampling: {raw['threads']} threads on the measuring machine, nothing else running."]
    return save_report("digits_guidance", "Classifier-free guidance on digits: FD against class accuracy",
                       [table, per_class], notes=notes, plots=["digits_guidance.png", *grids],
                       command=raw["command"], machine=raw_machine(raw, threads=raw["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="last.ckpt of a digits_edm2_cond run")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--num", type=int, default=500, help="images per guidance weight (every digit in turn)")
    parser.add_argument("--threads", type=int, default=2)
    add_from_raw(parser, "sampling")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_guidance_report):
        return
    if args.checkpoint is None:
        parser.error("--checkpoint is required (or --from-raw)")
    raw = measure(args)
    # the report names the run as `pynodeta fit` lays it out, not where this machine keeps it
    raw["command"] = ("pynodeta fit --config digits_edm2_cond; python3 benchmarks/digits_guidance.py --checkpoint "
                      f"runs/digits_edm2_cond/version_0/checkpoints/last.ckpt --guidance "
                      f"{' '.join(f'{w:g}' for w in args.guidance)} --num {args.num} --threads {args.threads}")
    plot(raw, RESULTS_DIR / "digits_guidance.png")
    print(save_guidance_report(load_raw(save_raw("digits_guidance", raw))))


if __name__ == "__main__":
    main()
