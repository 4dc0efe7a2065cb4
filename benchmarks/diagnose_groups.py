"""Seed 001 in miniature on digits: GroupNorm groups, BN and the positional embedding, with the diagnosis.

The seed-001 NODE classifier (stem, ODE block f = [norm–act–ConcatConv–norm–act–ConcatConv–norm],
head) is trained briefly on scikit-learn's 8×8 digits for
  * GroupNorm with G ∈ {1, 2, 4, …, C} groups (Kim et al. 2024, Fig. 7: accuracy falls as G grows);
  * GN (G = min(C/4, 32), the paper's baseline rule) vs BN vs BN + positional timestep embedding
    (Table 1: BN loses time, the positional embedding restores it).
For each: test accuracy, mean forward NFE on the test set (dopri5, rtol = atol = 1e-3) and the
survival ratio that ``pynodeta.diagnose`` measures for the ODE function's normalisations (the
smallest over the two norms that follow a ConcatConv), at initialisation and after training.

Departures from the paper, to fit a few CPU minutes: C = 16 channels instead of 256, a stride-1
stem (the ODE runs on 8×8 maps, as the paper's CIFAR model does), no dropout, 8 epochs of Adam with
a one-cycle schedule instead of 250 epochs of SGD, and gradients by backpropagation through the
solver instead of the adjoint (the forward NFE is unaffected). One thread: these layers are too
small to gain from more, and it leaves the other core free.

    PYTHONPATH=. python3 benchmarks/diagnose_groups.py [--channels 16] [--epochs 8] [--seeds 0 1]
                                                        [--out benchmarks/results/]
writes the report diagnose_groups.json and the plot diagnose_groups.png to --out.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from pynodeta.data import DigitsDataModule
from pynodeta.diagnose import audit_ode_blocks
from pynodeta.models import NODE_SOLVER, ConvODEClassifier

from make_results import render_table
from reporting import Table, save_report


@dataclass
class Run:
    label: str
    groups: int | None
    accuracy: float       # test accuracy, %
    nfe: float            # mean forward NFE per test batch
    survival_init: float  # smallest survival over the ODE function's norms after a time entry
    survival: float       # the same after training
    verdict: str          # the diagnosis after training: the worst verdict and where
    vanishing: bool
    seconds: float


def configurations(channels: int) -> list[tuple[str, dict]]:
    """The G sweep, then BN and BN + positional (GN's baseline G = min(C/4, 32) is in the sweep)."""
    sweep = [(f"GN G={g}", dict(norm="gn", groups=g)) for g in _powers_of_two(channels)]
    return [*sweep, ("BN", dict(norm="popti-bn")), ("BN + p_t", dict(norm="popti-bn", positional=True))]


def _powers_of_two(channels: int) -> list[int]:
    return [2 ** k for k in range(int(math.log2(channels)) + 1)]


def diagnose(model, x) -> tuple[float, str, bool]:
    """(smallest survival, worst verdict with its layer, vanishing) of the model's ODE function."""
    (report,) = audit_ode_blocks(model, x)
    norms = [f for f in report.findings if f.survival is not None]
    worst = min(norms, key=lambda f: f.survival)
    return worst.survival, f"{worst.verdict} at f[{worst.layer}]", report.vanishing


def evaluate(model, loader) -> tuple[float, float]:
    model.eval()
    correct = total = 0
    nfes = []
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
            nfes.append(model.ode.nfe_forward)
    return 100.0 * correct / total, statistics.fmean(nfes)


def train_and_diagnose(label: str, options: dict, seed: int, data, args) -> Run:
    torch.manual_seed(seed)
    model = ConvODEClassifier((1, 8, 8), 10, channels=args.channels, stem_strides=(1, 1), dropout=0.0,
                              solver=replace(NODE_SOLVER, adjoint=False), **options)
    probe = next(iter(data.test_dataloader()))[0][: args.audit_batch]
    survival_init, _, _ = diagnose(model, probe)
    steps = args.epochs * len(data.train_dataloader())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr / 10)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for x, y in data.train_dataloader():
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
    accuracy, nfe = evaluate(model, data.test_dataloader())
    survival, verdict, vanishing = diagnose(model, probe)
    return Run(label, options.get("groups"), accuracy, nfe, survival_init, survival, verdict, vanishing,
               time.perf_counter() - start)


def _cell(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: dict[str, list[Run]], channels: int) -> Table:
    rows = []
    for label, group in runs.items():
        per_group = "—" if group[0].groups is None else str(channels // group[0].groups)
        verdict = "; ".join(sorted({r.verdict for r in group}))
        rows.append([label, per_group, _cell([r.accuracy for r in group], 1), _cell([r.nfe for r in group], 1),
                     _cell([r.survival_init for r in group], 3), _cell([r.survival for r in group], 3), verdict])
    columns = ["model", "C/G", "test acc. (%)", "mean NFE", "survival at init", "survival trained", "diagnosis"]
    return Table(columns, rows)


def plot(runs: dict[str, list[Run]], baseline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = {r[0].groups: r for label, r in runs.items() if label.startswith("GN G=")}
    groups = sorted(sweep)
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for axis, attribute, name in zip(axes[:3], ("accuracy", "nfe", "survival"),
                                     ("test accuracy (%)", "mean forward NFE", "diagnosed survival")):
        means = [statistics.fmean(getattr(r, attribute) for r in sweep[g]) for g in groups]
        axis.plot(groups, means, "o-")
        axis.set_xscale("log", base=2)
        axis.set_xticks(groups, [str(g) for g in groups])
        axis.set_xlabel("GroupNorm groups G")
        axis.set_title(name)
    comparison = [baseline, *(label for label in runs if not label.startswith("GN G="))]
    survivals = [statistics.fmean(r.survival for r in runs[label]) for label in comparison]
    bars = axes[3].bar(range(len(comparison)), survivals)
    for bar, label in zip(bars, comparison):
        accuracy = statistics.fmean(r.accuracy for r in runs[label])
        axes[3].annotate(f"{accuracy:.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=8)
    axes[3].set_xticks(range(len(comparison)), comparison)
    axes[3].set_title("survival (bars), test accuracy (labels)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=16, help="C, a power of two")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--audit-batch", type=int, default=64, help="test images the diagnosis runs on")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.channels < 4 or args.channels & (args.channels - 1):
        parser.error(f"--channels must be a power of two >= 4, got {args.channels}")
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = DigitsDataModule(batch_size=args.batch_size, eval_batch_size=120)
    data.setup("fit")
    data.setup("test")
    runs: dict[str, list[Run]] = {}
    for label, options in configurations(args.channels):
        for seed in args.seeds:
            run = train_and_diagnose(label, options, seed, data, args)
            runs.setdefault(label, []).append(run)
            print(f"{label:24s} seed {seed}: acc {run.accuracy:5.1f}%  NFE {run.nfe:5.1f}  survival "
                  f"{run.survival_init:.3f} -> {run.survival:.3f}  ({run.seconds:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    baseline = f"GN G={min(args.channels // 4, 32)}"
    note = (f"Seed-001 NODE classifier on digits (360 test images), C = {args.channels}, {args.epochs} "
            f"epochs, seeds {args.seeds}; GN baseline (G = min(C/4, 32)): {baseline}; "
            f"{time.perf_counter() - started:.0f} s in all.")
    plot(runs, baseline, args.out / "diagnose_groups.png")
    result = table(runs, args.channels)
    path = save_report("diagnose_groups", "Seed 001 on digits: GroupNorm groups, BN and the positional embedding",
                       [result], notes=[note], plots=["diagnose_groups.png"], directory=args.out)
    print(note, "", render_table(result), sep="\n")
    print(f"wrote {path} and {args.out / 'diagnose_groups.png'}")


if __name__ == "__main__":
    main()
