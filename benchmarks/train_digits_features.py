"""Train the digits feature extractor shipped as ``pynodeta/metrics/weights/digits_features.pt``.

    PYTHONPATH=. python3 benchmarks/train_digits_features.py [--out pynodeta/metrics/weights/digits_features.pt]

Deterministic (seeded, one thread, deterministic kernels): running it again reproduces the file bit
for bit on the same torch version. The classifier learns on the digits' training pool (the 1437
images the DigitsDataModule keeps for train + validation) in the diffusion data scale pixel/8 − 1,
with small Gaussian jitter so that generated (continuous-valued) images stay in distribution.
Saves the report benchmarks/results/digits_features.json (rendered into docs/results.md): test accuracy,
the FD floor (pool vs test features) and the weights' SHA-256; the raw record goes to
benchmarks/results/raw/, and ``--from-raw FILE`` rebuilds the report from it without training.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from pynodeta.data.sampling import stratified_split
from pynodeta.metrics import DigitsFeatureExtractor, DigitsFeatureNet, frechet_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import Table, add_from_raw, load_raw, raw_machine, rebuilt_from_raw, save_raw, save_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEST_SIZE, SPLIT_SEED = 360, 0  # DigitsDataModule's defaults: its test split is stratified_split(.., seed + 1)


def digits_splits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pool images, pool labels, test images, test labels); images (n, 1, 8, 8) in [−1, 1]."""
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 8 - 1
    labels = torch.from_numpy(digits.target).long()
    pool, test = stratified_split(labels.numpy(), TEST_SIZE, SPLIT_SEED + 1)
    return images[pool], labels[pool], images[test], labels[test]


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> DigitsFeatureNet:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = DigitsFeatureNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for batch in order.split(64):
            jitter = 0.05 * torch.randn(images[batch].shape, generator=generator)
            loss = loss_fn(net(images[batch] + jitter), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def save_features_report(raw: dict) -> Path:
    """The report (accuracy, FD floor, checksum of the shipped weights) from the raw record."""
    table = Table(["weights", "epochs", "seed", "test accuracy", "FD floor (pool vs test)", "pool / test images",
                   "SHA-256"],
                  [[raw["weights"], raw["epochs"], raw["seed"], raw["test_accuracy"], raw["fd_floor_pool_vs_test"],
                    f"{raw['num_pool']} / {raw['num_test']}", raw["sha256"][:16] + "…"]],
                  "the digits feature extractor behind every FD on digits")
    notes = ["Deterministic: rerunning the command reproduces the weights bit for bit on the same torch version."]
    return save_report("digits_features", "The digits feature extractor: accuracy and FD floor", [table],
                       notes=notes, command=raw["command"], machine=raw_machine(raw, threads=1, torch=raw["torch"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "pynodeta/metrics/weights/digits_features.pt")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    add_from_raw(parser, "training")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_features_report):
        return
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    pool_x, pool_y, test_x, test_y = digits_splits()
    net = train(pool_x, pool_y, args.epochs, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: value.detach().clone() for name, value in net.state_dict().items()}, args.out)

    extractor = DigitsFeatureExtractor(args.out)
    with torch.no_grad():
        accuracy = float((net(test_x).argmax(1) == test_y).float().mean())
    floor = frechet_distance(extractor(pool_x), extractor(test_x))
    report = {
        "weights": str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else args.out.name,
        "sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
        "epochs": args.epochs, "seed": args.seed, "torch": torch.__version__,
        "test_accuracy": accuracy, "fd_floor_pool_vs_test": floor,
        "num_pool": len(pool_y), "num_test": len(test_y),
    }
    print(save_features_report(load_raw(save_raw("digits_features", report))))


if __name__ == "__main__":
    main()
