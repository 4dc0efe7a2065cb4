"""``pynodeta sample`` and ``pynodeta evaluate``: draw images from, and score, a trained diffusion model.

    pynodeta sample --checkpoint runs/digits_edm/version_0/checkpoints/last.ckpt \\
        --sampler heun --steps 32 --num 64 --out samples.png
    pynodeta sample --checkpoint CKPT --sampler ode --rtol 1e-4 --out samples.png
    pynodeta evaluate --checkpoint CKPT --sampler ddim --steps 50          # DDPM: also the variational bound

The model and data are rebuilt from the ``config.yaml`` that ``pynodeta fit`` saves beside the run's
``checkpoints/`` folder (or ``--config``); the EMA weights are used unless ``--no-ema``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .._cli import ArgumentParser, UsageError
from .diffusion_sampling import SAMPLER_NAMES, save_grid

__all__ = ["sample_main", "evaluate_main", "load_diffusion_run"]


def _common_arguments(parser: argparse.ArgumentParser, num_default: int) -> None:
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint written by pynodeta fit")
    parser.add_argument("--config", default=None, help="the run's config (default: config.yaml beside checkpoints/)")
    parser.add_argument("--sampler", default=None, choices=SAMPLER_NAMES, help="default: the run's sampler")
    parser.add_argument("--steps", type=int, default=None, help="noise levels or DDIM steps (default: the run's)")
    parser.add_argument("--num", type=int, default=num_default, help=f"images to draw (default {num_default})")
    parser.add_argument("--rtol", type=float, default=1e-3, help="--sampler ode (and the NLL): dopri5 rtol")
    parser.add_argument("--atol", type=float, default=1e-3, help="--sampler ode (and the NLL): dopri5 atol")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    parser.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default=None,
                        help="where the network runs, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")


def _config_path(checkpoint: Path, config: str | None) -> Path:
    if config is not None:
        from .configs import shipped_configs

        path = Path(config)
        return path if path.is_file() else shipped_configs().get(config, path)
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise ValueError(f"no config.yaml beside {str(checkpoint)!r} or its parent; pass --config CONFIG.yaml")


def load_diffusion_run(checkpoint: str | Path, config: str | None = None):
    """(DiffusionModule with the checkpoint's weights and EMA, its DataModule) of a ``pynodeta fit`` run."""
    import yaml
    from jsonargparse import ArgumentParser as ConfigParser
    from lightning.pytorch import LightningDataModule, LightningModule

    from .diffusion import DiffusionModule

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"--checkpoint {str(checkpoint)!r} does not exist or is not a file")
    path = _config_path(checkpoint, config)
    if not path.is_file():
        raise ValueError(f"--config {str(path)!r} does not exist")
    content = yaml.safe_load(path.read_text())
    parser = ConfigParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    built = instantiate(parser.parse_object({"model": content["model"], "data": content["data"]}))
    module, datamodule = built.model, built.data
    if not isinstance(module, DiffusionModule):
        raise ValueError(f"{str(path)!r} trains a {type(module).__name__}, not a DiffusionModule")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own run's file
    module.load_state_dict(state["state_dict"])
    if module.ema is not None and "pynodeta_ema" in state:
        module.ema.load_state_dict(state["pynodeta_ema"])
    return module, datamodule


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name!r}: this machine has no CUDA device; use --device cpu")
    return device


def _setup(args):
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    if args.num < 1:
        raise UsageError(f"--num must be >= 1, got {args.num}")
    device = _device(args.device)
    module, datamodule = load_diffusion_run(args.checkpoint, args.config)
    module.to(device).eval()
    if args.no_ema or module.ema is None:
        return module, datamodule
    module.ema.copy_to(module.model)  # this process only evaluates: the raw weights are not needed again
    return module, datamodule


def _run(main, argv: list[str], prog: str) -> int:
    try:
        return main(argv)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2


def _sample(argv: list[str]) -> int:
    parser = ArgumentParser(prog="pynodeta sample", description="Draw images from a trained diffusion model.")
    _common_arguments(parser, num_default=64)
    parser.add_argument("--out", default="samples.png", help="PNG grid to write (default samples.png)")
    parser.add_argument("--save-tensor", default=None, help="also save the images as a .pt tensor here")
    args = parser.parse_args(argv)
    module, _ = _setup(args)
    generator = torch.Generator().manual_seed(args.seed)
    samples = module.draw(args.num, args.sampler, args.steps, generator=generator, rtol=args.rtol, atol=args.atol)
    grid = save_grid(samples.images, args.out)
    if args.save_tensor:
        torch.save(samples.images, args.save_tensor)
    print(f"pynodeta sample: {args.num} images, sampler {samples.sampler}, NFE {samples.nfe:.0f}, "
          f"{samples.seconds:.2f} s -> {grid}")
    return 0


def _evaluate(argv: list[str]) -> int:
    from .diffusion_evaluation import evaluate_samples, nll_bits_per_dim, summary_line, vlb_bits_per_dim

    parser = ArgumentParser(prog="pynodeta evaluate", description="FD (with the real-data floor), NLL in bits/dim "
                            "and, for DDPM models, the variational bound in bits/dim.")
    _common_arguments(parser, num_default=500)
    parser.add_argument("--nll-images", type=int, default=None,
                        help="test images of the NLL and the bound (default: the run's)")
    parser.add_argument("--vlb-timesteps", type=int, default=None,
                        help="DDPM: estimate the bound from K stratified timesteps per image (default: all T, exact)")
    parser.add_argument("--out", default="evaluation_samples.png", help="grid of the first 64 drawn images")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    module, datamodule = _setup(args)
    datamodule.setup("test")
    result = evaluate_samples(module, args.out, datamodule, num=args.num, sampler=args.sampler, steps=args.steps,
                              rtol=args.rtol, atol=args.atol)
    result.update(nll_bits_per_dim(module, datamodule, args.nll_images, rtol=args.rtol, atol=args.atol))
    result.update(vlb_bits_per_dim(module, datamodule, args.nll_images, sampled_timesteps=args.vlb_timesteps))
    print(json.dumps(result, indent=2) if args.json else summary_line(result).replace("summary", "evaluate", 1))
    return 0


def sample_main(argv: list[str]) -> int:
    """``pynodeta sample ...``; returns the exit status."""
    return _run(_sample, argv, "pynodeta sample")


def evaluate_main(argv: list[str]) -> int:
    """``pynodeta evaluate ...``; returns the exit status."""
    return _run(_evaluate, argv, "pynodeta evaluate")
