"""A network comparison: pynodeta's digits_ddpm network against diffusers' UNet2DModel, both trained with
pynodeta's digits_ddpm recipe (so this is not diffusers as its users train it: diffusion_vs_diffusers.py
races the shipped configs against diffusers' own recipe, tuned for the budget).

Both train on the 8×8 digits in [-1, 1] (ε-prediction, T = 1000 linear betas, Adam with the same
learning rate, warm-up, clipping and EMA) for the same wall time, one step of each in turn so that
both see the same machine load; then each draws images with DDIM-50. Reported per model: parameter
count, iterations/s (own time only), FD / real-data floor in the digits features, sampling time.

    python benchmarks/same_recipe_networks.py --minutes 8        # needs: pip install diffusers
Saves the report benchmarks/results/same_recipe_networks.json (rendered into docs/results.md) and the
raw record to benchmarks/results/raw/; ``--from-raw FILE`` rebuilds the report from such a file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

from pynodeta.data import DigitsDataModule
from pynodeta.diffusion import DDPMSchedule, sample_ddim
from pynodeta.ema import EMA
from pynodeta.metrics import DigitsFeatureExtractor, frechet_distance
from pynodeta.models import DDPMUNet
from pynodeta.train.configs import shipped_config_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import Table, add_from_raw, load_raw, raw_machine, rebuilt_from_raw, save_raw, save_report  # noqa: E402

NAME = "same_recipe_networks"
OLD_NAME = "diffusion_vs_diffusers.py"


def pynodeta_network() -> torch.nn.Module:
    """The network of the shipped digits_ddpm config."""
    config = yaml.safe_load(shipped_config_path("digits_ddpm").read_text())
    return DDPMUNet(**config["model"]["init_args"]["model"]["init_args"])


def diffusers_network(width: int) -> torch.nn.Module:
    """UNet2DModel of about the same size: two levels (width, 2·width), attention at 4×4, as in its docs."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(width, 2 * width), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


class Trainer:
    """ε-prediction training of one network with pynodeta's digits_ddpm optimiser settings."""

    def __init__(self, name: str, network, call, schedule: DDPMSchedule, lr=2e-3, warmup=100, ema_decay=0.995):
        self.name, self.network, self.call, self.schedule = name, network, call, schedule
        self.optimizer = torch.optim.Adam(network.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.ema = EMA(network, ema_decay)
        self.seconds, self.steps = 0.0, 0

    def step(self, x0: torch.Tensor, generator: torch.Generator) -> None:
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        started = time.perf_counter()
        x_t = self.schedule.add_noise(x0, noise, t)
        loss = (self.call(self.network, t, x_t) - noise).square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.step(self.network)
        self.seconds += time.perf_counter() - started
        self.steps += 1


def evaluate(trainer: Trainer, num: int, reference, extractor) -> dict:
    trainer.ema.copy_to(trainer.network)
    trainer.network.eval()
    noise = torch.randn(num, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    started = time.perf_counter()
    with torch.no_grad():
        images = sample_ddim(lambda t, x: trainer.call(trainer.network, t, x), noise, trainer.schedule, num_steps=50)
    seconds = time.perf_counter() - started
    fd = frechet_distance(extractor(images).double(), reference["test"])
    return {"parameters": sum(p.numel() for p in trainer.network.parameters()), "steps": trainer.steps,
            "train_seconds": trainer.seconds, "iterations_per_second": trainer.steps / trainer.seconds,
            "fd": fd, "fd_floor": reference["floor"], "fd_ratio": fd / reference["floor"],
            "ddim50_seconds": seconds, "ddim50_images": num}


def save_comparison_report(raw: dict) -> Path:
    """The report (one row per network) from the raw record :func:`main` writes."""
    rows = [[name, r["parameters"], r["iterations_per_second"], r["steps"], r["ddim50_seconds"], r["fd_ratio"]]
            for name, r in raw["results"].items()]
    table = Table(["network", "parameters", "it/s (batch 64)", "steps", "DDIM-50 s (360 images)", "FD / floor"],
                  rows, f"{raw['minutes_per_model']:g} minutes of training each, one step of each in turn, "
                  f"{raw['threads']} thread(s), seed {raw['seed']}")
    ours, theirs = (raw["results"][name] for name in raw["results"])
    per_parameter = (ours["iterations_per_second"] * ours["parameters"]) / (
        theirs["iterations_per_second"] * theirs["parameters"])
    notes = ["The steps are interleaved, so both networks saw the same machine load. FD is of raw (unclipped) "
             "DDIM-50 samples in the digits features, over the train-vs-test floor.",
             f"Iterations/s times parameters, pynodeta over diffusers: {per_parameter:.2f} (the two networks "
             f"differ in size by {ours['parameters'] / theirs['parameters']:.2f}x)."]
    command = raw["command"]
    if OLD_NAME in command:  # measured before the script was renamed; the same code runs under the new name
        command = command.replace(OLD_NAME, "same_recipe_networks.py")
        notes.append(f"Measured by this script under its earlier name benchmarks/{OLD_NAME}.")
    notes.append("Both networks were trained with pynodeta's digits_ddpm recipe: a comparison of networks, not of "
                 "pynodeta against diffusers as its users train it; for that see diffusion_vs_diffusers.py.")
    return save_report(NAME, "Same recipe, two networks: digits_ddpm's DDPMUNet against diffusers' UNet2DModel",
                       [table], notes=notes, command=command, machine=raw_machine(raw, threads=raw["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time of each model")
    parser.add_argument("--diffusers-width", type=int, default=32, help="UNet2DModel block_out_channels[0]")
    parser.add_argument("--num-samples", type=int, default=360, help="DDIM-50 images per model for the FD")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_from_raw(parser, "training")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_comparison_report):
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = DigitsDataModule(batch_size=64, normalization="diffusion", seed=args.seed)
    data.setup()
    schedule = DDPMSchedule(1000, "linear")
    trainers = [
        Trainer("pynodeta DDPMUNet (digits_ddpm)", pynodeta_network(), lambda net, t, x: net(t, x), schedule),
        Trainer("diffusers UNet2DModel", diffusers_network(args.diffusers_width),
                lambda net, t, x: net(x, t).sample, schedule),
    ]
    generator, budget = torch.Generator().manual_seed(args.seed), 60 * args.minutes
    while any(tr.seconds < budget for tr in trainers):
        for x0, _ in data.train_dataloader():
            for trainer in trainers:  # one step each in turn: both see the same load
                if trainer.seconds < budget:
                    trainer.step(x0, generator)
            if all(tr.seconds >= budget for tr in trainers):
                break
    extractor = DigitsFeatureExtractor()
    real = lambda ds: extractor(torch.stack([ds[i][0] for i in range(len(ds))])).double()  # noqa: E731
    test = real(data.test_set)
    reference = {"test": test, "floor": frechet_distance(real(data.train_set), test)}
    results = {tr.name: evaluate(tr, args.num_samples, reference, extractor) for tr in trainers}
    raw = save_raw(NAME, {"minutes_per_model": args.minutes, "threads": args.threads,
                                               "seed": args.seed, "results": results})
    save_comparison_report(load_raw(raw))
    for name, r in results.items():
        print(f"{name}: {r['parameters']} params, {r['iterations_per_second']:.2f} it/s ({r['steps']} steps), "
              f"FD {r['fd']:.2f} / floor {r['fd_floor']:.2f} = {r['fd_ratio']:.2f}x, "
              f"DDIM-50 {r['ddim50_seconds']:.1f} s")


if __name__ == "__main__":
    main()
