"""``pynodeta diagnose``: audit the time awareness of a model's ODE right-hand sides.

Exit status: 0 when time survives everywhere, 1 when it vanishes somewhere (for use in CI),
2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch
from torch import nn

from pynodeta.nn import is_time_aware

from .._cli import ArgumentParser, UsageError
from .audit import DEFAULT_TIMES
from .loading import load_model_and_inputs
from .ode_blocks import audit_ode_blocks, find_ode_functions
from .time_ranges import diffusion_times

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="pynodeta diagnose",
        description="Find where a model's timestep signal dies: for every ODE block, where time enters "
                    "its right-hand side and whether it survives each normalisation after that "
                    "(Kim et al. 2024, 'The Disappearance of Timestep Embedding'). Exit status 1 when "
                    "time vanishes somewhere.",
    )
    parser.add_argument("--config", help="training config (YAML with model: and data: sections); the audit "
                                         "runs on the first samples of its test split, with --checkpoint's "
                                         "weights if given")
    parser.add_argument("--checkpoint", help="checkpoint to audit (a Lightning checkpoint, with or without --config); "
                                             "read with torch.load(weights_only=True), which runs no code from "
                                             "the file")
    parser.add_argument("--unsafe-load", action="store_true",
                        help="also accept a whole pickled nn.Module (torch.save(model, path)): unpickles with "
                             "weights_only=False, which runs any code the file holds; only for files you "
                             "made or fully trust")
    parser.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                        help="a module (and its submodules) besides pynodeta whose LightningModule / "
                             "LightningDataModule classes the checkpoint may name; repeatable")
    parser.add_argument("--times", type=float, nargs="+", default=None,
                        help="times to compare (default: 5 points over each ODE block's span; for a diffusion "
                             "network over the times it is used with: DDPM timesteps 0 … T-1, EDM's "
                             "c_noise = ln(sigma)/4 over its sigma range, else the network's time_range; "
                             f"else {' '.join(f'{t:g}' for t in DEFAULT_TIMES)})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples in the audited batch (default 16, or all of the test split or of the "
                             "checkpoint's example input if it has fewer); the audit keeps len(times) copies of "
                             "every activation")
    parser.add_argument("--module", default=None,
                        help="audit this submodule (an ODE block or a forward(t, x) module), e.g. model.ode.func; "
                             "default: every ODE block found")
    parser.add_argument("--train-mode", action="store_true",
                        help="run the model in train mode (batch statistics everywhere, dropout with a fixed "
                             "mask); default eval mode, where BatchNorm-type layers are also measured with "
                             "batch statistics")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="a survival ratio below this counts as cancelled (default 0.05)")
    parser.add_argument("--input-shape", type=int, nargs="+", default=None,
                        help="shape of one input sample for a checkpoint without an example input, "
                             "e.g. 1 8 8 (a seeded standard-normal batch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random batch and of dropout masks")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def _model_and_inputs(args):
    if args.config is None and args.checkpoint is None:
        raise UsageError("pass --config CONFIG.yaml, --checkpoint CKPT, or both")
    if args.config is not None and args.input_shape is not None:
        raise ValueError("--input-shape conflicts with --config, whose data section gives the input")
    with warnings.catch_warnings():  # main() has printed the --unsafe-load warning once already
        warnings.filterwarnings("ignore", message="--unsafe-load")
        return load_model_and_inputs(args.config, args.checkpoint, batch_size=args.batch_size,
                                     input_shape=args.input_shape, seed=args.seed, unsafe_load=args.unsafe_load,
                                     allowed_modules=args.allow_module)


def main(argv: list[str]) -> int:
    """Run ``pynodeta diagnose`` with ``argv``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        if args.unsafe_load:
            print("pynodeta diagnose: warning: --unsafe-load unpickles the checkpoint with "
                  "torch.load(weights_only=False), which runs any code it contains; use it only on files "
                  "you made or fully trust", file=sys.stderr)
        model, inputs = _model_and_inputs(args)
        # A LightningModule holds its network in .model: run that; module paths start at the root.
        network = model.model if isinstance(getattr(model, "model", None), nn.Module) else model
        module, run = args.module, lambda: network(*inputs)
        times = args.times
        if is_time_aware(network) and not find_ode_functions(model):
            # a diffusion network is itself the time-aware function: forward(t, x) at one time,
            # audited over the times it is trained and sampled at
            module = module or ("model" if network is not model else "")
            run = lambda: network(torch.zeros(()), *inputs)  # noqa: E731
            times = times if times is not None else diffusion_times(model, network)
        reports = audit_ode_blocks(model, inputs, times, module=module, run=run,
                                   mode="train" if args.train_mode else "eval",
                                   threshold=args.threshold, seed=args.seed)
    except UsageError as error:
        build_parser().print_usage(sys.stderr)
        print(f"pynodeta diagnose: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as error:  # bad file, shape, option, dataset
        print(f"pynodeta diagnose: error: {error}", file=sys.stderr)
        return 2
    vanishing = any(report.vanishing for report in reports)
    if args.json:
        print(json.dumps({"vanishing": vanishing, "reports": [r.to_dict() for r in reports]}, indent=2))
    else:
        print("\n\n".join(str(report) for report in reports))
    return 1 if vanishing else 0
