"""What the digits benchmarks against diffusers share: the reference (FD / floor at N), diffusers' anchor network,
its training under a named recipe and DDIM sampling, and a pynodeta fit's own record.

Used by ``quality_per_nfe.py`` and ``diffusion_vs_diffusers.py``; not a benchmark itself.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pynodeta.data import DigitsDataModule
from pynodeta.ema import EMA
from pynodeta.metrics import DigitsFeatureExtractor, frechet_distance

NUM = 1000


class Reference:
    """Test features and the floor at N = ``num`` (``num`` training images against the test images)."""

    def __init__(self, num: int = NUM):
        data = DigitsDataModule(batch_size=64, normalization="diffusion")
        data.setup()
        self.data, self.num = data, num
        self.extractor = DigitsFeatureExtractor()
        test = torch.stack([data.test_set[i][0] for i in range(len(data.test_set))])
        self.test = self.extractor(test).double()
        pick = torch.randperm(len(data.train_set), generator=torch.Generator().manual_seed(0))[:num]
        train = torch.stack([data.train_set[int(i)][0] for i in pick])
        self.floor = frechet_distance(self.extractor(train).double(), self.test)

    def fd_ratio(self, images: torch.Tensor) -> float:
        """images: (N, 1, 8, 8) in [-1, 1] (clamped first) -> FD against the test images / floor."""
        return frechet_distance(self.extractor(images.clamp(-1, 1)).double(), self.test) / self.floor


def fit_record(run_root: Path) -> dict:
    """The fit's own summary (FD / floor at the config's N, NLL, sampler), its optimiser steps and epochs."""
    summary = json.loads(next(Path(run_root).rglob("summary.json")).read_text())
    rows = [row for path in Path(run_root).rglob("metrics.csv") for row in csv.DictReader(path.open())]
    steps = max(int(row["step"]) for row in rows if row.get("step")) + 1
    epochs = max((int(row["epoch"]) for row in rows if row.get("epoch")), default=-1) + 1
    return {"steps": steps, "epochs": epochs,
            **{key: summary[key] for key in ("fd_ratio", "bpd", "sampler", "sampler_nfe")}}


# --- diffusers' network under a recipe ---------------------------------------------------------------------------
def anchor_network():
    """diffusers' UNet2DModel for 8×8: two levels of 32 and 64 channels, two layers each, attention at 4×4."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(32, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


@dataclass(frozen=True)
class Recipe:
    """How the anchor is trained. ``ema_power`` > 0: diffusers' ``EMAModel`` warm-up, decay
    1 - (1 + step)^-power capped at ``ema_decay``; ``ema_power`` = 0: a fixed decay ``ema_decay``."""

    lr: float
    batch: int
    ema_decay: float = 0.9999
    ema_power: float = 3 / 4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    eps: float = 1e-8
    warmup_steps: int = 500
    cosine: bool = True          # cosine decay to zero at the end of the wall-time budget, after the warm-up
    max_grad_norm: float | None = 1.0

    def averaging(self) -> str:
        """The weights it samples with, in words."""
        return (f"EMA warm-up power {self.ema_power:.3g} (max {self.ema_decay:g})" if self.ema_power
                else f"EMA {self.ema_decay:g}")

    def describe(self) -> str:
        ema = self.averaging()
        schedule = f"cosine, {self.warmup_steps} warm-up steps" if self.cosine else "constant lr"
        return f"AdamW lr {self.lr:g}, batch {self.batch}, {ema}, {schedule}"

    def to_dict(self) -> dict:
        return asdict(self)


# quality_per_nfe's anchor: AdamW lr 1e-3 with torch's default betas and weight decay, batch 128, a fixed EMA 0.999,
# constant lr, no clipping; chosen without a sweep
UNTUNED_RECIPE = Recipe(lr=1e-3, batch=128, ema_decay=0.999, ema_power=0, betas=(0.9, 0.999), weight_decay=0.01,
                        warmup_steps=0, cosine=False, max_grad_norm=None)


# --- the anchor's candidate recipes --------------------------------------------------------------------------
def candidate_recipes() -> dict[str, Recipe]:
    """diffusers' documented recipe, quality_per_nfe's untuned one, and the grid around the documented one."""
    table = {"diffusers_documented": Recipe(lr=1e-4, batch=16), "quality_per_nfe": UNTUNED_RECIPE}
    emas = {"p0.75": dict(ema_power=3 / 4), "p0.67": dict(ema_power=2 / 3),
            "fixed0.999": dict(ema_power=0, ema_decay=0.999)}
    for lr_name, lr in (("5e-4", 5e-4), ("1e-3", 1e-3), ("2e-3", 2e-3)):
        for batch in (64, 128):
            for ema_name, ema in emas.items():
                table[f"lr{lr_name}_b{batch}_{ema_name}"] = Recipe(lr=lr, batch=batch, **ema)
    # past the grid's best corner (lr 2e-3, batch 64): a larger learning rate, a smaller batch
    table["lr4e-3_b64_p0.75"] = Recipe(lr=4e-3, batch=64)
    table["lr2e-3_b32_p0.75"] = Recipe(lr=2e-3, batch=32)
    return table


def lr_factor(recipe: Recipe, step: int, elapsed_fraction: float) -> float:
    """The learning-rate multiplier: a linear warm-up over ``warmup_steps``, then (``cosine``) half a cosine to zero
    over the rest of the wall-time budget. diffusers' script decays over a step count (epochs × batches); with a
    budget in minutes the step count is unknown ahead, so the cosine runs over the elapsed fraction of the budget."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    if not recipe.cosine:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, elapsed_fraction)))


class _Average:
    """One interface over the two EMA kinds: diffusers' EMAModel (warm-up) or pynodeta's fixed-decay EMA."""

    def __init__(self, network, recipe: Recipe):
        if recipe.ema_power:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(network.parameters(), decay=recipe.ema_decay, use_ema_warmup=True,
                                inv_gamma=1.0, power=recipe.ema_power)
            self.step = lambda net: self.ema.step(net.parameters())
            self.copy_to = lambda net: self.ema.copy_to(net.parameters())
        else:
            self.ema = EMA(network, recipe.ema_decay)
            self.step, self.copy_to = self.ema.step, self.ema.copy_to


def train_anchor(recipe: Recipe, minutes: float, data: DigitsDataModule, seed: int = 0):
    """Train the anchor for ``minutes`` of wall time: ε-prediction with diffusers' DDPMScheduler (T = 1000,
    linear β). Returns (network with the averaged weights, in eval mode, optimiser steps)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    network, scheduler = anchor_network(), DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(network.parameters(), lr=recipe.lr, betas=recipe.betas,
                                  weight_decay=recipe.weight_decay, eps=recipe.eps)
    average = _Average(network, recipe)
    loader = torch.utils.data.DataLoader(data.train_set, batch_size=recipe.batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    budget, started, steps = 60 * minutes, time.perf_counter(), 0
    while time.perf_counter() - started < budget:
        for x0, _ in loader:
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * lr_factor(recipe, steps, (time.perf_counter() - started) / budget)
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (x0.shape[0],))
            loss = (network(scheduler.add_noise(x0, noise, t), t).sample - noise).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(network.parameters(), recipe.max_grad_norm)
            optimizer.step()
            average.step(network)
            steps += 1
            if time.perf_counter() - started >= budget:
                break
    average.copy_to(network)
    return network.eval(), steps


@torch.no_grad()
def ddim_images(network, num: int, steps: int = 50, seed: int = 7) -> torch.Tensor:
    """``num`` images (num, 1, 8, 8) from seeded noise with diffusers' DDIMScheduler (η = 0), ``steps`` NFE."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.set_timesteps(steps)
    x = torch.randn(num, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    for t in scheduler.timesteps:
        x = scheduler.step(network(x, t).sample, t, x).prev_sample
    return x
