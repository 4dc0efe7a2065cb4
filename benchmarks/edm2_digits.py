"""EDM2 in miniature on the 8×8 digits: training dynamics, post-hoc EMA and cost.

    nice -n 10 python benchmarks/edm2_digits.py dynamics --steps 600
    nice -n 10 python benchmarks/edm2_digits.py phema --steps 1500
    nice -n 10 python benchmarks/edm2_digits.py cost
    python benchmarks/edm2_digits.py report      # rebuild the reports from the raw JSON files in --out

dynamics  weight and activation magnitudes over training of the EDM2 U-Net with forced weight
          normalisation (EDM2), with standard weight normalisation only (stored weights free to grow),
          and with no weight normalisation (the paper's Fig. 2 question in miniature)
phema     one run with power-function EMA snapshots (σ_rel 0.05, 0.10), FD vs σ_rel from post-hoc
          reconstruction with the optimum marked, and the reconstruction of σ_rel 0.07 checked against
          the same profile tracked directly (error relative to the EMA-to-raw-weights gap)
cost      a training step of EDM2UNet vs an equal-width DDPMUNet (alternating, same process) and the
          share of a step taken by the power-function EMA update with two profiles

Each mode saves its report benchmarks/results/edm2_<mode>.json (rendered into docs/results.md) with its plot
(edm2_dynamics.png, edm2_phema_sweep.png) and its raw result to --out (default benchmarks/results/raw/);
``--from-raw FILE`` (or the ``report`` mode, for every raw file in --out) rebuilds the reports without training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from pynodeta.data.sampling import stratified_split
from pynodeta.diffusion import karras_sigmas, sample_heun
from pynodeta.diffusion.edm2 import EDM2_ADAM_BETAS, EDM2Precond, edm2_learning_rate, edm2_loss
from pynodeta.ema import PowerFunctionEMA, posthoc_reconstruct
from pynodeta.ema.sweep import write_sweep
from pynodeta.metrics import DigitsFeatureExtractor, frechet_distance
from pynodeta.models.diffusion.edm2_unet import EDM2Block, EDM2UNet
from pynodeta.nn.mp import MPConv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import (  # noqa: E402
    RAW_DIR,
    RESULTS_DIR,
    Table,
    add_from_raw,
    command_line,
    load_raw,
    raw_machine,
    rebuilt_from_raw,
    save_report,
)


def digits_splits() -> tuple[torch.Tensor, torch.Tensor]:
    """(training pool, test) images (n, 1, 8, 8) in [−1, 1], the split of DigitsDataModule."""
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 8 - 1
    pool, test = stratified_split(digits.target, 360, 1)
    return images[pool], images[test]


def digits_edm2_unet(width: int = 32, weight_norm: str = "forced") -> EDM2UNet:
    """The digits-sized EDM2 U-Net (as configs/digits_edm2.yaml): 8×8 and 4×4 levels, attention at 4×4."""
    net = EDM2UNet(8, 1, model_channels=width, channel_mult=(1, 2), num_blocks=2, attn_resolutions=(4,),
                   channels_per_head=32)
    for module in net.modules():
        if isinstance(module, MPConv):
            module.weight_norm = weight_norm
    return net


class Trainer:
    """EDM2 loss, Adam (0.9, 0.99), EDM2 learning-rate schedule; one optimiser step per call."""

    def __init__(self, precond: EDM2Precond, pool: torch.Tensor, args, seed: int):
        self.precond, self.pool, self.args = precond, pool, args
        self.optimizer = torch.optim.Adam(precond.parameters(), lr=args.lr, betas=EDM2_ADAM_BETAS)
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0

    def step(self) -> float:
        self.step_count += 1
        for group in self.optimizer.param_groups:
            group["lr"] = edm2_learning_rate(self.step_count, self.args.lr, self.args.ref_steps, self.args.warmup)
        index = torch.randint(len(self.pool), (self.args.batch,), generator=self.generator)
        self.precond.train()
        loss = edm2_loss(self.precond, self.pool[index], generator=self.generator).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


@torch.no_grad()
def generate(precond: EDM2Precond, num: int, steps: int, seed: int) -> torch.Tensor:
    """Deterministic Heun (EDM Algorithm 1), Karras levels σ 80 → 0.002, ρ = 7."""
    precond.eval()
    generator = torch.Generator().manual_seed(seed)
    sigmas = karras_sigmas(steps)
    noise = torch.randn(num, 1, 8, 8, generator=generator)
    return sample_heun(precond, noise * sigmas[0], sigmas).clamp(-1, 1)


def magnitudes(net: EDM2UNet, probe: torch.Tensor, sigma: float) -> dict:
    """Mean RMS of the stored MPConv weights (per output row) and of the block outputs on a fixed probe."""
    weights = [m.weight.detach().flatten(1).pow(2).mean(1).sqrt().mean().item()
               for m in net.modules() if isinstance(m, MPConv)]
    outputs = []
    hooks = [b.register_forward_hook(lambda mod, a, out: outputs.append(out.pow(2).mean().sqrt().item()))
             for b in net.modules() if isinstance(b, EDM2Block)]
    net.eval()
    with torch.no_grad():
        c_in = 1 / math.sqrt(sigma**2 + 0.25)
        net(torch.full((len(probe),), math.log(sigma) / 4), c_in * probe)
    for hook in hooks:
        hook.remove()
    return {"weight_rms": float(np.mean(weights)), "activation_rms": float(np.mean(outputs)),
            "activation_rms_max": float(np.max(outputs))}


def run_dynamics(args) -> dict:
    pool, _ = digits_splits()
    generator = torch.Generator().manual_seed(7)
    probe = pool[:64] + 1.0 * torch.randn(64, 1, 8, 8, generator=generator)
    curves = {}
    for mode in ("forced", "standard", "none"):
        torch.manual_seed(args.seed)
        precond = EDM2Precond(digits_edm2_unet(args.width, mode), logvar_channels=32)
        trainer = Trainer(precond, pool, args, args.seed)
        curve, started = [], time.perf_counter()
        for step in range(1, args.steps + 1):
            loss = trainer.step()
            if step == 1 or step % args.every == 0:
                curve.append({"step": step, "loss": loss, **magnitudes(precond.unet, probe, 1.0)})
        curves[mode] = {"curve": curve, "seconds": time.perf_counter() - started}
        print(mode, curve[-1], flush=True)
    return {"curves": curves}


def plot_dynamics(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"forced": "EDM2 (forced WN)", "standard": "standard WN only", "none": "no WN"}
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, data in result["curves"].items():
        steps = [row["step"] for row in data["curve"]]
        axes[0].plot(steps, [row["weight_rms"] for row in data["curve"]], label=labels[mode])
        axes[1].plot(steps, [row["activation_rms"] for row in data["curve"]], label=labels[mode])
    axes[0].set_title("stored weight RMS (mean over layers)")
    axes[1].set_title("block output RMS (mean over blocks, σ = 1)")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_phema(args) -> dict:
    pool, test = digits_splits()
    extractor = DigitsFeatureExtractor()
    test_features = extractor(test)
    floor = frechet_distance(extractor(pool), test_features)
    torch.manual_seed(args.seed)
    precond = EDM2Precond(digits_edm2_unet(args.width), logvar_channels=32)
    net = precond.unet
    stored, tracked = PowerFunctionEMA(net, (0.05, 0.10)), PowerFunctionEMA(net, (0.07,))
    trainer = Trainer(precond, pool, args, args.seed)
    directory = Path(tempfile.mkdtemp(prefix="edm2_phema_"))
    started, ema_seconds = time.perf_counter(), 0.0
    for step in range(1, args.steps + 1):
        trainer.step()
        tick = time.perf_counter()
        stored.update(step)
        ema_seconds += time.perf_counter() - tick
        tracked.update(step)
        if step % args.snapshot_every == 0:
            stored.save_snapshot(directory, step)
    train_seconds = time.perf_counter() - started

    def fd_of(state: dict) -> float:
        net.load_state_dict(state)
        return frechet_distance(extractor(generate(precond, args.samples, args.sampler_steps, 0)), test_features)

    raw = {k: v.clone() for k, v in net.state_dict().items()}
    direct = {k: v.clone() for k, v in tracked.averaged(0.07).state_dict().items()}
    rebuilt = posthoc_reconstruct(directory, 0.07)
    floating = [k for k in direct if direct[k].is_floating_point()]
    error = math.sqrt(sum((rebuilt[k] - direct[k]).pow(2).sum().item() for k in floating))
    gap = math.sqrt(sum((raw[k] - direct[k]).pow(2).sum().item() for k in floating))
    rows = []
    for sigma_rel in [round(0.02 + 0.01 * i, 2) for i in range(19)]:
        rows.append({"sigma_rel": sigma_rel, "score": fd_of(posthoc_reconstruct(directory, sigma_rel))})
        print(rows[-1], flush=True)
    check = {"reconstruction_error": error, "ema_to_raw_gap": gap, "relative_error": error / gap,
             "fd_direct_0.07": fd_of(direct), "fd_posthoc_0.07": next(r["score"] for r in rows
                                                                    if r["sigma_rel"] == 0.07),
             "fd_raw_weights": fd_of(raw)}
    shutil.rmtree(directory)
    best = min(rows, key=lambda r: r["score"])
    return {"rows": rows, "fd_floor": floor, "best": best, "check_0.07": check, "train_seconds": train_seconds,
            "ema_update_seconds_per_step": ema_seconds / args.steps,
            "num_snapshots": args.steps // args.snapshot_every}


def timed_steps(trainer_step, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        trainer_step()
    return (time.perf_counter() - started) / count


def run_cost(args) -> dict:
    from pynodeta.models.diffusion.ddpm_unet import DDPMUNet

    pool, _ = digits_splits()
    torch.manual_seed(args.seed)
    edm2 = EDM2Precond(digits_edm2_unet(args.width), logvar_channels=32)
    ddpm_net = DDPMUNet(image_size=8, in_channels=1, channels=args.width, channel_mult=(1, 2), num_res_blocks=2,
                        attention_resolutions=(4,), dropout=0.0, norm_groups=8)
    edm2_trainer = Trainer(edm2, pool, args, args.seed)
    ddpm_optimizer = torch.optim.Adam(ddpm_net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(args.seed)

    def ddpm_step():
        x0 = pool[torch.randint(len(pool), (args.batch,), generator=generator)]
        t = torch.randint(1000, (args.batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = (ddpm_net(t, x0 + noise) - noise).pow(2).mean()  # the cost of a step, not a faithful loss
        ddpm_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ddpm_optimizer.step()

    ema = PowerFunctionEMA(edm2.unet, (0.05, 0.10))
    counter = iter(range(1, 10**9))
    timings = {"edm2": [], "ddpm": [], "ema_update": []}
    for _ in range(args.rounds):  # alternate, so that load on the shared machine hits both alike
        timings["edm2"].append(timed_steps(edm2_trainer.step, args.repeats))
        timings["ddpm"].append(timed_steps(ddpm_step, args.repeats))
        timings["ema_update"].append(timed_steps(lambda: ema.update(next(counter)), args.repeats))
    median = {k: float(np.median(v)) for k, v in timings.items()}
    return {"seconds_per_step_median": median, "edm2_over_ddpm": median["edm2"] / median["ddpm"],
            "ema_share_of_edm2_step": median["ema_update"] / (median["edm2"] + median["ema_update"]),
            "parameters": {"edm2": sum(p.numel() for p in edm2.unet.parameters()),
                           "ddpm": sum(p.numel() for p in ddpm_net.parameters())},
            "timings": timings}


def dynamics_table(result: dict) -> Table:
    rows = []
    for mode, data in result["curves"].items():
        curve = data["curve"]
        for row in (curve[0], curve[len(curve) // 2], curve[-1]):
            rows.append([mode, row["step"], f"{row['loss']:.3f}", f"{row['weight_rms']:.3f}",
                         f"{row['activation_rms']:.2f} / {row['activation_rms_max']:.2f}"])
    return Table(["weight normalisation", "step", "loss", "stored weight RMS", "block output RMS (mean / max)"],
                 rows, "magnitudes on a fixed batch at sigma = 1")


def phema_table(result: dict) -> Table:
    check = result["check_0.07"]
    ema_seconds = result["ema_update_seconds_per_step"]
    ema_share = ema_seconds / (result["train_seconds"] / result["settings"]["steps"])
    rows = [["FD real-data floor", f"{result['fd_floor']:.2f}"],
            ["best sigma_rel (post hoc) / FD", f"{result['best']['sigma_rel']:.2f} / {result['best']['score']:.2f}"],
            ["FD raw weights", f"{check['fd_raw_weights']:.2f}"],
            ["FD sigma_rel 0.07 tracked / post hoc", f"{check['fd_direct_0.07']:.2f} / {check['fd_posthoc_0.07']:.2f}"],
            ["‖post hoc − tracked‖ / ‖raw − tracked‖ at 0.07", f"{check['relative_error']:.2e}"],
            ["EMA update per step / share of a training step",
             f"{ema_seconds:.3f} s / {100 * ema_share:.1f} %"]]
    return Table(["quantity", "value"], rows, f"one run, {result['num_snapshots']} snapshots; FD in digits features")


def cost_table(result: dict) -> Table:
    median = result["seconds_per_step_median"]
    rows = [["EDM2UNet step / DDPMUNet step (equal width)", f"{result['edm2_over_ddpm']:.2f}"],
            ["seconds per step EDM2 / DDPM / EMA update",
             f"{median['edm2']:.3f} / {median['ddpm']:.3f} / {median['ema_update']:.4f}"],
            ["EMA update (2 profiles) share of a step", f"{100 * result['ema_share_of_edm2_step']:.1f} %"],
            ["parameters EDM2 / DDPM", f"{result['parameters']['edm2']} / {result['parameters']['ddpm']}"]]
    return Table(["quantity", "value"], rows, "median seconds per step, alternating rounds in one process")


TITLES = {"dynamics": "EDM2 on digits: weight and activation magnitudes over training",
          "phema": "EDM2 on digits: post-hoc EMA, FD against sigma_rel",
          "cost": "EDM2 on digits: cost of a training step and of the power-function EMA"}


def save_edm2_report(result: dict) -> Path:
    """The report of one mode (``result["settings"]["what"]``) and its plot, from the raw result."""
    what = result["settings"]["what"]
    plots = []
    if what == "dynamics":
        plot_dynamics(result, RESULTS_DIR / "edm2_dynamics.png")
        plots = ["edm2_dynamics.png"]
    if what == "phema":
        with tempfile.TemporaryDirectory() as directory:
            paths = write_sweep(result["rows"], directory, "FD (digits features)",
                                reference={"real-data floor": result["fd_floor"]})
            shutil.copyfile(paths["png"], RESULTS_DIR / "edm2_phema_sweep.png")
        plots = ["edm2_phema_sweep.png"]
    table = {"dynamics": dynamics_table, "phema": phema_table, "cost": cost_table}[what](result)
    facts = dict(result.get("machine", {}))
    machine_note = facts.pop("note", "")  # a note, not a fact: it opens the report's notes
    notes = [f"{machine_note[:1].upper()}{machine_note[1:]}; " if machine_note else ""]
    notes = [notes[0] + "ratios come from alternating rounds in one process." if what == "cost" else
             notes[0] + "one run per figure."]
    return save_report(f"edm2_{what}", TITLES[what], [table], notes=notes, plots=plots, command=result["command"],
                       machine=raw_machine({"machine": facts}, threads=result["settings"]["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["dynamics", "phema", "cost", "report"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01, help="EDM2 reference learning rate")
    parser.add_argument("--ref-steps", type=int, default=300, help="t_ref of the 1/√t decay")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--every", type=int, default=25, help="dynamics: steps between measurements")
    parser.add_argument("--snapshot-every", type=int, default=50, help="phema: steps between snapshots")
    parser.add_argument("--samples", type=int, default=512, help="phema: images per FD")
    parser.add_argument("--sampler-steps", type=int, default=18, help="phema: Heun noise levels (2n − 1 NFE)")
    parser.add_argument("--rounds", type=int, default=5, help="cost: alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=10, help="cost: steps per timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--machine-note", default="", help="how the machine was shared during the run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RAW_DIR), help="directory of the raw JSON files")
    add_from_raw(parser, "training")
    args = parser.parse_args()
    if rebuilt_from_raw(args, save_edm2_report):
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.what == "report":
        for what in ("dynamics", "phema", "cost"):
            if (out / f"edm2_{what}.json").is_file():
                print(save_edm2_report(load_raw(out / f"edm2_{what}.json")))
        return
    started = time.perf_counter()
    result = {"dynamics": run_dynamics, "phema": run_phema, "cost": run_cost}[args.what](args)
    result["command"] = command_line()
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "from_raw")}
    result["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                         "cpus": os.cpu_count(), "note": args.machine_note}
    result["wall_seconds"] = time.perf_counter() - started
    stem = out / f"edm2_{args.what}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(f"wrote {stem}.json ({result['wall_seconds']:.0f} s) and {save_edm2_report(result)}")


if __name__ == "__main__":
    main()
