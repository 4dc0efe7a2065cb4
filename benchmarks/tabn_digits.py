"""TA-BN vs its baselines on 8x8 digits: the TA-BN paper's comparison in miniature.

Trains the same neural ODE (the main job's seed-001-style classifier, dopri5 with the adjoint)
with four normalisations inside the ODE function -- TA-BN, Pop-TI BN (one running-statistics pair
for all times), mini-batch BN (batch statistics at test time too) and none -- for several seeds,
then tests each trained model with test batch sizes 256 and 2. Mini-batch BN's test output depends
on the other samples of the batch; TA-BN's and Pop-TI BN's do not.

    python benchmarks/tabn_digits.py                 # 4 norms x 3 seeds, about 10 minutes on 2 cores
    python benchmarks/tabn_digits.py --epochs 3 --seeds 0   # a quick look

Writes the report tabn_digits.json and the plot tabn_digits.png to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import lightning
import torch
from torch.utils.data import DataLoader

from pynodeta.data import DigitsDataModule
from pynodeta.models import NODE_SOLVER, ConvODEClassifier
from pynodeta.train import NODEClassifier, TABNAdamW, forward_nfe, ode_solvers

from make_results import render_table
from reporting import Table, save_report

NORMS = {"tabn": "TA-BN", "popti-bn": "Pop-TI BN", "minibatch-bn": "mini-batch BN", "none": "no BN"}
TEST_BATCH_SIZES = (256, 2)


def build_model(norm: str) -> ConvODEClassifier:
    """The main job's network (digits_tabn.yaml) with another normalisation inside the ODE."""
    return ConvODEClassifier(
        in_shape=(1, 8, 8), num_classes=10, channels=32, norm=norm, stem_strides=(1, 2),
        norm_options={"M": 10} if norm == "tabn" else None,
        solver=NODE_SOLVER,  # dopri5, rtol = atol = 1e-3, adjoint
    )


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, data: DigitsDataModule, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean forward NFE per batch) on the test split with the given batch size."""
    model.eval()
    blocks = ode_solvers(model)
    correct, nfe, batches = 0, 0, 0
    for x, y in DataLoader(data.test_set, batch_size=batch_size):
        correct += int((model(x).argmax(dim=1) == y).sum())
        nfe, batches = nfe + forward_nfe(blocks), batches + 1
    return correct / len(data.test_set), nfe / batches


def run(norm: str, seed: int, epochs: int, threads: int) -> dict:
    """Train one (norm, seed) model and test it with every test batch size."""
    torch.set_num_threads(threads)
    lightning.seed_everything(seed, verbose=False)
    module = NODEClassifier(build_model(norm), optim=TABNAdamW(lr=5e-3))
    data = DigitsDataModule(batch_size=64, augment=True, seed=seed)
    trainer = lightning.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, limit_val_batches=0)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    result = {"norm": norm, "seed": seed, "train_s": time.perf_counter() - started,
              "train_nfe_forward": float(trainer.callback_metrics["train/nfe_forward"]),
              "train_nfe_backward": float(trainer.callback_metrics["train/nfe_backward"])}
    for batch_size in TEST_BATCH_SIZES:
        result[f"acc_{batch_size}"], result[f"nfe_{batch_size}"] = test_accuracy(module.model, data, batch_size)
    print(f"{NORMS[norm]:>14} seed {seed}: " + ", ".join(
        f"acc@{b} {result[f'acc_{b}']:.4f}" for b in TEST_BATCH_SIZES) + f" ({result['train_s']:.0f} s)", flush=True)
    return result


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def table(results: list[dict]) -> Table:
    rows = []
    for norm, label in NORMS.items():
        runs = [r for r in results if r["norm"] == norm]
        acc256, acc2 = [r["acc_256"] for r in runs], [r["acc_2"] for r in runs]
        rows.append([label, _mean_std(acc256), _mean_std(acc2),
                     f"{statistics.mean(acc256) - statistics.mean(acc2):+.4f}",
                     round(statistics.mean(r["train_nfe_forward"] for r in runs), 1),
                     round(statistics.mean(r["train_nfe_backward"] for r in runs), 1),
                     round(statistics.mean(r["nfe_256"] for r in runs), 1)])
    columns = ["normalisation in the ODE", "test acc, batch 256", "test acc, batch 2", "drop (256 → 2)",
               "NFE fwd (train)", "NFE bwd (train)", "NFE fwd (test, batch 256)"]
    return Table(columns, rows)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for i, batch_size in enumerate(TEST_BATCH_SIZES):
        means, errors = [], []
        for norm in NORMS:
            values = [r[f"acc_{batch_size}"] for r in results if r["norm"] == norm]
            means.append(statistics.mean(values))
            errors.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        positions = [k + (i - 0.5) * width for k in range(len(NORMS))]
        ax.bar(positions, means, width, yerr=errors, capsize=3, label=f"test batch size {batch_size}")
    ax.set_xticks(range(len(NORMS)), list(NORMS.values()))
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Normalisation inside a neural ODE, 8x8 digits")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = parser.parse_args()
    if args.epochs < 1 or args.jobs < 1 or args.threads < 1:
        parser.error("--epochs, --jobs and --threads must be >= 1")
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    tasks = [(norm, seed, args.epochs, args.threads) for seed in args.seeds for norm in NORMS]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run, *zip(*tasks)))
    plot(results, os.path.join(args.out, "tabn_digits.png"))
    notes = [f"Digits (8x8), seed-001-style NODE (C = 32, ODE on 32x4x4, dopri5 1e-3, adjoint), {args.epochs} "
             f"epochs, AdamW 5e-3; seeds {args.seeds}; mean ± standard deviation over seeds.",
             f"Total wall time {time.perf_counter() - started:.0f} s with {args.jobs} parallel runs."]
    result = table(results)
    save_report("tabn_digits", "TA-BN against its baselines on digits", [result], notes=notes,
                plots=["tabn_digits.png"], directory=args.out)
    print(render_table(result), *notes, sep="\n")


if __name__ == "__main__":
    main()
