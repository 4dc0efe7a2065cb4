"""``pynodeta sample`` and ``pynodeta evaluate``: draw images from, and score, a trained diffusion model.

    pynodeta sample --checkpoint runs/digits_edm/version_0/checkpoints/last.ckpt \\
        --sampler heun --steps 32 --num 64 --out samples.png
    pynodeta sample --checkpoint CKPT --num 50000 --save-tensor samples.npy   # streamed, memory O(batch)
    pynodeta evaluate --checkpoint CKPT                                        # fit's own FD, reproduced
    pynodeta evaluate --checkpoint CKPT --average none --sampler ddim --steps 50
    pynodeta sample --checkpoint CKPT --class-labels 3 --guidance 2      # class-conditional runs
    pynodeta sample --checkpoint edm2-img512-xs-2147483-0.135.pkl --class-labels 88 --out none \\
        --save-tensor latents.npy                            # a released EDM2 network (NVlabs' pickle)
    pynodeta evaluate --checkpoint CKPT --class-labels all --guidance 1.5
    pynodeta sample --checkpoint CKPT --class-labels 207 --vae sd-vae-ft-mse/   # latent runs: decode to images
    pynodeta evaluate --checkpoint CKPT --inception-weights pt_inception-2015-12-05-6726825d.pth \\
        --write-reference-stats cifar10_train.npz                            # once: the training set's statistics
    pynodeta evaluate --checkpoint CKPT --num 50000 --inception-weights pt_inception-2015-12-05-6726825d.pth \\
        --reference-stats cifar10_train.npz --devices 8 --cache cache/      # FID at 50k: 8 ranks, resumable
    pynodeta sample --checkpoint CKPT --precision bf16     # the network under bf16 autocast, the state in float32
    pynodeta sample --checkpoint CKPT --sampler ddim --sampler-option clip_x0=true --sampler-option eta=0.5

The run is read by :func:`~pynodeta.train.run_loader.load_run` (``weights_only=True``, class paths
vetted before any import; ``--unsafe-load`` the one opt-in). Weights: the average ``fit`` evaluated
with unless ``--average`` says otherwise (``ema``, ``sigma_rel=0.10``, ``none``). Every output path
is checked before anything is loaded or drawn, and written atomically. A run trained on VAE latents
(``LatentDataModule``) is decoded to images through the VAE its checkpoint records (``--vae`` overrides it).
Flags are kebab-case; the snake-case spellings (``--num_threads``) are kept as aliases.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from pathlib import Path

import torch

from pynodeta.diffusion.guidance import check_guidance
from pynodeta.diffusion.precision import autocast_dtype

from .._cli import ArgumentParser, UsageError, command_device
from . import adaptive_threads
from .diffusion_sampling import OWN_STEP_SAMPLERS, sampler_names
from .latent_runs import run_decoder
from .sample_outputs import GRID_MAX, GridWriter, TensorWriter, check_grid_channels, check_output_path

__all__ = ["sample_main", "evaluate_main", "load_diffusion_run"]


def _common_arguments(parser: argparse.ArgumentParser, seed_default: int | None = 0,
                      seed_help: str = "seed of the initial noise") -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="Lightning checkpoint written by pynodeta fit, or a released NVlabs/edm2 .pkl network "
                             "(read as data: its embedded code never runs)")
    parser.add_argument("--config", default=None, help="the run's config (default: config.yaml beside checkpoints/)")
    parser.add_argument("--average", default=None, metavar="KEY",
                        help="weights to use: ema, sigma_rel=0.10 (a tracked power-function EMA profile) or none "
                             "(raw); default: what fit evaluated with")
    parser.add_argument("--no-ema", "--no_ema", dest="no_ema", action="store_true",
                        help="the raw weights: the same as --average none")
    parser.add_argument("--sampler", default=None, choices=sampler_names(), help="default: the run's sampler")
    parser.add_argument("--steps", type=int, default=None,
                        help="noise levels or DDIM steps (default: the run's); refused with ddpm, dpm_adaptive and "
                             "ode, which choose their own")
    parser.add_argument("--sampler-option", "--sampler_option", dest="sampler_option", action="append", default=None,
                        metavar="NAME=VALUE",
                        help="an option of the sampler, e.g. clip_x0=true or eta=0.5 for ddim; repeatable. Given, they "
                             "replace the run's evaluation.sampler_options, which apply only with the run's sampler")
    parser.add_argument("--rtol", type=float, default=None,
                        help="--sampler ode and the NLL: dopri5 rtol (default: the run's evaluation.solver or 1e-3)")
    parser.add_argument("--atol", type=float, default=None,
                        help="--sampler ode and the NLL: dopri5 atol (default: the run's evaluation.solver or 1e-3)")
    parser.add_argument("--class-labels", "--class_labels", dest="class_labels", default=None, metavar="CLASS",
                        help="class-conditional runs: a class (e.g. 3) or 'all' (every class in turn); "
                             "default: 'all' for evaluate, required by sample")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance weight w, D_u + w(D_c - D_u) (1: none; default: the run's)")
    parser.add_argument("--precision", default="32", metavar="PRECISION",
                        help="the network's precision while drawing images: 32 (float32), bf16 or 16 (float16) "
                             "autocast; the sampler's state, evaluate's NLL and bound stay float32 (default 32)")
    parser.add_argument("--seed", type=int, default=seed_default, help=seed_help)
    parser.add_argument("--vae", default=None, metavar="DIR",
                        help="latent runs: the diffusers AutoencoderKL folder to decode with (default: the one the "
                             "run recorded; for a run that recorded none, e.g. a released EDM2 .pkl, its own "
                             "constants or EDM2's for SD's VAE)")
    parser.add_argument("--num-threads", "--num_threads", dest="num_threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's, lowered to a container's CPU quota)")
    parser.add_argument("--adaptive-threads", "--adaptive_threads", dest="adaptive_threads", action="store_true",
                        help="up to --num-threads threads (default: torch's count), fewer while other processes "
                             "use the cores (Linux; re-read every 5 s)")
    parser.add_argument("--device", default=None,
                        help="where the network runs, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    parser.add_argument("--allow-module", "--allow_module", dest="allow_module", action="append", default=[],
                        metavar="MODULE",
                        help="a module besides pynodeta whose classes the run's files may name; repeatable")
    parser.add_argument("--unsafe-load", "--unsafe_load", dest="unsafe_load", action="store_true",
                        help="unpickle the checkpoint with weights_only=False, which runs any code it holds; only "
                             "for files you made or fully trust")


def _check_numbers(args) -> None:
    """Every number (and sampler option) a user types is checked here, by name: none falls back to a default
    silently."""
    for name, value, low in (("--num", args.num, 1), ("--steps", args.steps, 1), ("--num_threads", args.num_threads, 1),
                             ("--nll-images", getattr(args, "nll_images", None), 1),
                             ("--vlb-timesteps", getattr(args, "vlb_timesteps", None), 1)):
        if value is not None and value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    # torch's generators take seeds in [0, 2^64): a negative one would stand for 2^64 + seed there, and the blocks
    # of a sharded evaluation refuse it, so both commands refuse it alike
    if args.seed is not None and not 0 <= args.seed < 2 ** 64:
        raise UsageError(f"--seed must lie in [0, 2^64 − 1] (the seeds of a torch generator), got {args.seed}")
    for name, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a positive number, got {value}")
    if args.guidance is not None:
        try:
            check_guidance(args.guidance, "--guidance")
        except ValueError as error:
            raise UsageError(str(error)) from None
    if args.class_labels is not None and args.class_labels != "all":
        try:
            args.class_labels = int(args.class_labels)
        except ValueError:
            raise UsageError(f"--class-labels must be a class number or 'all', got {args.class_labels!r}") from None
    if args.sampler is not None:  # the run's own sampler is checked once the run is read
        _check_steps(args, args.sampler)
    args.sampler_options = _sampler_options(args.sampler_option)
    try:
        autocast_dtype(args.precision, "--precision")
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.no_ema and args.average not in (None, "none"):
        raise UsageError(f"--no-ema conflicts with --average {args.average}; pass one of them")


# what each of OWN_STEP_SAMPLERS does instead of taking steps, and what to pass: a --steps would be ignored
_OWN_STEPS = {
    "ddpm": ("walks every one of the DDPM schedule's T timesteps", "drop --steps, or pass --sampler ddim for fewer"),
    "dpm_adaptive": ("chooses its steps from an error estimate",
                     "drop --steps (--sampler-option rtol=... and atol=... set its accuracy)"),
    "ode": ("solves the probability-flow ODE with adaptive steps", "drop --steps (--rtol and --atol set its accuracy)"),
}


def _check_steps(args, sampler: str) -> None:
    """--steps (None when not given: the run's steps) refused with a sampler that would ignore it."""
    if args.steps is not None and sampler in OWN_STEP_SAMPLERS:
        does, fix = _OWN_STEPS[sampler]
        raise UsageError(f"--steps {args.steps} would be ignored: sampler {sampler!r} {does}; {fix}")


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _sampler_options(given: list[str] | None) -> dict | None:
    """--sampler-option NAME=VALUE flags as a dict (None when there are none); values are read as YAML scalars,
    so true, 0.5, 1e-5 and midpoint come out as a bool, a float, a float and a string."""
    if given is None:
        return None
    import yaml  # jsonargparse's dependency: imported only when options are given

    options = {}
    for item in given:
        name, equals, text = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise UsageError(f"--sampler-option takes NAME=VALUE, e.g. clip_x0=true; got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-5 (an exponent, no dot) as a string; a number is meant
        if isinstance(value, (dict, list)):
            raise UsageError(f"--sampler-option {item!r}: the value must be a number, a string or true/false")
        if name in options:
            raise UsageError(f"--sampler-option {name!r} is given twice; pass each option once")
        options[name] = value
    return options


def load_diffusion_run(checkpoint: str | Path, config: str | None = None, *, average: str | None = None,
                       allow_modules=(), unsafe: bool = False):
    """(Run, the key of the weights used) with the weights ``average`` (default: what fit evaluated with) put
    into the run's DiffusionModule."""
    from .diffusion import DiffusionModule
    from .run_loader import load_run

    run = load_run(checkpoint, config, allow_modules=allow_modules, unsafe=unsafe)
    if not isinstance(run.module, DiffusionModule):
        raise ValueError(f"{str(checkpoint)!r} is a run of {type(run.module).__name__}, not of a DiffusionModule; "
                         f"`pynodeta sample` and `evaluate` draw images from diffusion runs")
    return run, run.describe(run.use_average(average))


def _setup(args, prog: str):
    adaptive_threads.use_threads(args.num_threads, "--num-threads")  # none given: within a container's CPU limit
    device = command_device(args.device)
    # up to the thread count, fewer while other processes use the cores; without the flag, a CPU run of several
    # threads keeps its count and says once when the cores are too busy for it. _run's command_scope uninstalls it
    if args.adaptive_threads or (device.type == "cpu" and torch.get_num_threads() > 1):
        advice = None if args.adaptive_threads else adaptive_threads.COMMAND_ADVICE
        adaptive_threads.install(adaptive_threads.ThreadGovernor(torch.get_num_threads(), advice=advice))
    if args.unsafe_load:
        print(f"{prog}: warning: --unsafe-load unpickles the checkpoint with torch.load(weights_only=False), which "
              f"runs any code it contains; use it only on files you made or fully trust", file=sys.stderr)
    with warnings.catch_warnings():  # the warning is printed above, once, in the command's words
        warnings.filterwarnings("ignore", message="--unsafe-load")
        run, weights = load_diffusion_run(args.checkpoint, args.config, allow_modules=args.allow_module,
                                          average="none" if args.no_ema else args.average, unsafe=args.unsafe_load)
    run.module.to(device).eval()
    return run, weights


def _run(main, argv: list[str], prog: str) -> int:
    try:
        with adaptive_threads.command_scope():
            return main(argv, prog)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FloatingPointError, KeyError,
            ImportError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


def _sample(argv: list[str], prog: str) -> int:
    from .diffusion_sampling import describe_sampler_options, generate_batches, resolved_sampler_options

    parser = ArgumentParser(prog=prog, description="Draw images from a trained diffusion model.")
    _common_arguments(parser)
    parser.add_argument("--num", type=int, default=64, help="images to draw (default 64)")
    parser.add_argument("--out", default="samples.png",
                        help=f"PNG grid of the first {GRID_MAX} images (default samples.png); 'none': no grid, "
                             f"e.g. for latents kept with --save-tensor")
    parser.add_argument("--save-tensor", "--save_tensor", dest="save_tensor", default=None,
                        help="also save every image: .npy (written as drawn, memory O(batch)) or .pt (one tensor)")
    args = parser.parse_args(argv)
    args.command = "sample"
    _check_numbers(args)
    grid_wanted = args.out != "none"
    if grid_wanted:
        check_output_path(args.out, "--out", (".png",))
    elif not args.save_tensor:
        raise UsageError("--out none writes no grid; pass --save-tensor FILE.npy to keep the images")
    if args.save_tensor:
        check_output_path(args.save_tensor, "--save-tensor", (".npy", ".pt"))
    run, weights = _setup(args, prog)
    module = run.module
    decoder = run_decoder(run, args.vae, module.device)
    sampler = module.evaluation.sampler if args.sampler is None else args.sampler
    _check_steps(args, sampler)
    steps = module.evaluation.steps if args.steps is None else args.steps
    generator = torch.Generator().manual_seed(args.seed)
    shape = module.sample_shape
    if decoder is not None:  # images of 3 channels, f times the latents' size per side
        shape = (3, shape[1] * decoder.downsampling, shape[2] * decoder.downsampling)
    if grid_wanted:
        check_grid_channels(shape, args.out)
    grid = GridWriter(args.out) if grid_wanted else None
    tensor = TensorWriter(args.save_tensor, args.num, shape) if args.save_tensor else None
    options = resolved_sampler_options(module, sampler, args.sampler_options, "--sampler-option")  # before drawing
    nfes = []
    try:
        for batch in generate_batches(module, args.num, sampler, steps, generator=generator, solver=_solver(args),
                                      disable=None, precision=args.precision,  # disable=None: a bar on a terminal
                                      sampler_options=options, **_conditioning(args, module)):
            nfes.append(batch.nfe)
            images = batch.images if decoder is None else decoder.decode_to_unit_range(batch.images)
            if grid is not None:
                grid.add(images)
            if tensor is not None:
                tensor.add(images)
        written = [out.close() for out in (grid, tensor) if out is not None]
    finally:
        if tensor is not None:
            tensor.discard()  # nothing left behind if drawing failed; a no-op once closed
    decoded = "" if decoder is None else f", decoded by the VAE {decoder.source}"
    print(f"{prog}: {args.num} images, sampler {sampler}{describe_sampler_options(options)}, "
          f"NFE {sum(nfes) / len(nfes):.0f}, weights {weights}"
          f"{decoded} -> {', '.join(map(str, written))}")
    return 0


def _solver(args):
    """--rtol/--atol as the SolverSettings of the ode sampler and the NLL; None (the run's own) without them."""
    from pynodeta.ode import IController, SolverSettings

    if args.rtol is None and args.atol is None:
        return None
    rtol, atol = (1e-3 if value is None else value for value in (args.rtol, args.atol))
    controller = IController(rtol=rtol, atol=atol)
    return SolverSettings(method="dopri5", controller=controller)


def _conditioning(args, module) -> dict:
    """The class labels and guidance of a class-conditional run; refused for an unconditional one."""
    if module.num_classes is None:
        for flag, value in (("--class-labels", args.class_labels), ("--guidance", args.guidance)):
            if value is not None:
                raise UsageError(f"{flag} needs a class-conditional run; this run's network has no classes")
        return {}
    if args.class_labels is None and args.command == "sample":
        raise UsageError(f"this run is class-conditional ({module.num_classes} classes): pass --class-labels N "
                         "or --class-labels all")
    if isinstance(args.class_labels, int) and not 0 <= args.class_labels < module.num_classes:
        raise UsageError(f"--class-labels {args.class_labels}: this run's classes are 0 to {module.num_classes - 1}; "
                         f"pass one of them or --class-labels all")
    return {"class_labels": "all" if args.class_labels is None else args.class_labels,
            "guidance": module.evaluation.guidance if args.guidance is None else args.guidance}


def sample_main(argv: list[str]) -> int:
    """``pynodeta sample ...``; returns the exit status."""
    return _run(_sample, argv, "pynodeta sample")


def evaluate_main(argv: list[str]) -> int:
    """``pynodeta evaluate ...`` (:mod:`pynodeta.train.evaluate_cli`); returns the exit status."""
    from .evaluate_cli import evaluate_main

    return evaluate_main(argv)
