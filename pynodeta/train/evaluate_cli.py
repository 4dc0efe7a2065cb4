"""``pynodeta evaluate``: score a trained diffusion model (FD beside the real-data floor, NLL, DDPM's bound),
in one process or sharded over ranks.

    pynodeta evaluate --checkpoint CKPT                                   # fit's own FD, reproduced
    pynodeta evaluate --checkpoint CKPT --num 50000 --inception-weights pt_inception-2015-12-05-6726825d.pth \\
        --reference-stats cifar10_train.npz --devices 8 --cache cache/  # FID at 50k: 8 ranks, resumable

Without ``--devices``, ``--cache``, ``--block-size`` or torchrun, the images are drawn as ``fit`` draws them
(one generator, batch after batch), so that the default command gives fit's FD again. With any of them they
are drawn in seeded blocks (:mod:`pynodeta.train.sample_blocks`): the same images, and the same FD, with
1, 2 or 8 ranks, and each finished block can be cached. ``--devices N`` spawns N processes (gloo on CPU,
NCCL with a GPU each); under ``torchrun`` each process joins torchrun's group. Rank 0 alone writes and prints.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys

import torch

from .._cli import ArgumentParser, UsageError, command_device
from .evaluation_ranks import EvaluationRanks, RankFailure, free_port, torchrun_world_size
from .sample_cli import _check_numbers, _check_steps, _common_arguments, _conditioning, _run, _setup, _solver
from .sample_outputs import check_output_path

__all__ = ["evaluate_main"]


def _parser(prog: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="FD (with the real-data floor), NLL in bits/dim "
                            "and, for DDPM models, the variational bound in bits/dim.")
    _common_arguments(parser, seed_default=None, seed_help="seed of the noise (default 2024, fit's evaluation seed)")
    parser.add_argument("--num", type=int, default=None, help="images drawn for the FD (default: the run's, as fit)")
    parser.add_argument("--nll-images", "--nll_images", dest="nll_images", type=int, default=None,
                        help="test images of the NLL and the bound, at most the test split's (default: the run's)")
    parser.add_argument("--vlb-timesteps", "--vlb_timesteps", dest="vlb_timesteps", type=int, default=None,
                        help="DDPM runs only: estimate the bound from K stratified timesteps per image (default: "
                             "all T, exact)")
    parser.add_argument("--out", default="evaluation_samples.png",
                        help="PNG grid of the first 64 drawn images (default evaluation_samples.png); 'none': no grid")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (NaN written as null)")
    _feature_arguments(parser)
    group = parser.add_argument_group("sharded, resumable evaluation (images drawn in seeded blocks)")
    group.add_argument("--devices", type=int, default=None, metavar="N",
                       help="draw and score on N processes (CPU: gloo; CUDA: one GPU each); the FD is that of "
                            "--devices 1. Under torchrun: its WORLD_SIZE")
    group.add_argument("--cache", default=None, metavar="DIR",
                       help="keep every finished block's features here; a re-run skips them (a folder of "
                            "another evaluation is refused)")
    group.add_argument("--block-size", "--block_size", dest="block_size", type=int, default=None, metavar="B",
                       help="images per block, the sampler's batch (default 64); part of which images a seed gives")
    return parser


def _feature_arguments(parser) -> None:
    parser.add_argument("--inception-weights", "--inception_weights", dest="inception_weights", default=None,
                        metavar="PATH", help="FID's Inception: NVlabs' inception-2015-12-05.pkl/.pt or pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth (default: the run's evaluation.inception_weights)")
    parser.add_argument("--dinov2-weights", "--dinov2_weights", dest="dinov2_weights", default=None, metavar="PATH",
                        help="FD_DINOv2 instead of FID: DINOv2 ViT-L/14 weights (dinov2_vitl14_pretrain.pth, needs "
                        "timm)")
    parser.add_argument("--reference-stats", "--reference_stats", dest="reference_stats", default=None,
                        metavar="PATH", help="FD against saved statistics (pytorch-fid's .npz, or edm2's dataset-refs "
                        ".pkl) instead of the test images; no floor")
    parser.add_argument("--write-reference-stats", "--write_reference_stats", dest="write_reference_stats",
                        default=None, metavar="PATH", help="write the training images' statistics in these features "
                        "to PATH (.npz) and stop")


def _check_arguments(args, world: int | None) -> None:
    """Everything decided from the command line alone, before any process starts or any file is read."""
    _check_numbers(args)
    if args.num is not None and args.num < 2:
        raise UsageError(f"--num must be >= 2: the Fréchet distance estimates a covariance, got {args.num}")
    for name, value in (("--devices", args.devices), ("--block-size", args.block_size)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    if world is not None and args.devices not in (None, world):
        raise UsageError(f"--devices {args.devices} under torchrun, whose WORLD_SIZE is {world}: torchrun starts "
                         f"the processes; drop --devices")
    if args.write_reference_stats:
        check_output_path(args.write_reference_stats, "--write-reference-stats", (".npz",))
        if args.devices not in (None, 1) or world not in (None, 1) or args.cache:
            raise UsageError("--write-reference-stats runs in one process; drop --devices and --cache")
    if args.out != "none":
        check_output_path(args.out, "--out", (".png",))
    if args.inception_weights and args.dinov2_weights:
        raise UsageError("--inception-weights (FID) and --dinov2-weights (FD_DINOv2) name two metrics; pass one")
    if args.reference_stats and args.write_reference_stats:
        raise UsageError("--reference-stats reads statistics and --write-reference-stats writes them; pass one")
    if args.devices is not None and args.devices > 1 and world is None:
        if _device_type(args) == "cuda":
            if args.device not in (None, "cuda"):
                raise UsageError(f"--device {args.device} with --devices {args.devices}: each rank takes its own "
                                 f"GPU; pass --device cuda or leave it out")
            if args.devices > torch.cuda.device_count():
                raise UsageError(f"--devices {args.devices}: this machine has {torch.cuda.device_count()} GPUs")


def _device_type(args) -> str:
    """"cuda" or "cpu": where the ranks run (--device, default cuda where there is one)."""
    return command_device(args.device).type


def _evaluate(argv: list[str], prog: str) -> int:
    args = _parser(prog).parse_args(argv)
    args.command = "evaluate"
    world = torchrun_world_size()
    _check_arguments(args, world)
    if world is not None:  # started by torchrun: join its group, spawn nothing
        ranks = EvaluationRanks.join(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]),
                                     _device_type(args))
        return _on_rank(args, prog, ranks)
    if args.devices is not None and args.devices > 1:
        return _spawn(args, prog)
    return _evaluate_rank(args, prog, EvaluationRanks())


def _spawn(args, prog: str) -> int:
    """--devices N: N processes of this machine, meeting at a free port of 127.0.0.1."""
    import torch.multiprocessing as mp

    if args.num_threads is None and _device_type(args) == "cpu":  # N ranks share the cores instead of each taking all
        args.num_threads = max(1, (os.cpu_count() or 1) // args.devices)
    try:
        mp.spawn(_spawned_rank, args=(args, prog, free_port(), args.devices, _device_type(args)),
                 nprocs=args.devices)
    except mp.ProcessExitedException as error:
        return error.exit_code if error.exit_code and error.exit_code > 0 else 1
    except mp.ProcessRaisedException as error:  # an unexpected error: its traceback, as the rank raised it
        print(f"{prog}: error: a rank failed:\n{error}", file=sys.stderr)
        return 1
    return 0


def _spawned_rank(index: int, args, prog: str, port: int, world: int, device_type: str) -> None:
    ranks = EvaluationRanks.join(index, world, index, device_type, init_method=f"tcp://127.0.0.1:{port}")
    status = _on_rank(args, prog, ranks)
    if status:
        sys.exit(status)


def _on_rank(args, prog: str, ranks: EvaluationRanks) -> int:
    """One rank's evaluation; errors printed by rank 0 only (it reports every rank's)."""
    if ranks.world_size > 1:
        args.device = str(ranks.device)
    try:
        return _evaluate_rank(args, prog, ranks)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FloatingPointError, KeyError, ImportError,
            RankFailure) as error:
        if ranks.is_zero:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        if ranks.is_zero:
            raise
        return 2  # went to rank 0 through the gather (or happened there too): rank 0 reports it
    finally:
        ranks.leave()


def _evaluate_rank(args, prog: str, ranks: EvaluationRanks) -> int:
    from .diffusion_evaluation import evaluate_samples, nll_bits_per_dim, summary_line, vlb_bits_per_dim

    try:
        prepared = _prepare(args, prog, ranks)
    except Exception as error:
        if ranks.world_size > 1:  # the others enter the gather: so must this rank, with its error
            ranks.gather(functools.partial(_raise, error))
        raise
    if prepared is None:
        return 0  # --write-reference-stats, done
    module, datamodule, weights, options, blocks = prepared
    grid = args.out if ranks.is_zero and args.out != "none" else None
    result = evaluate_samples(module, grid, datamodule, num=args.num,
                              sampler=args.sampler, steps=args.steps, blocks=blocks, **options)
    if result is None:  # not rank 0: its blocks went to rank 0, which scores and writes
        return 0
    result = {"weights": weights, **result}
    if blocks is not None:
        result.update({"ranks": ranks.world_size, "block_size": blocks.block_size, "blocks_drawn": blocks.drawn,
                       "blocks_cached": blocks.cached})
    if datamodule is not None:
        result.update(nll_bits_per_dim(module, datamodule, args.nll_images, solver=_solver(args)))
        result.update(vlb_bits_per_dim(module, datamodule, args.nll_images, sampled_timesteps=args.vlb_timesteps))
    else:  # saved statistics and no test images (e.g. a released .pkl): no likelihood
        result.update({"bpd": math.nan, "bpd_stderr": math.nan, "nll_nfe": math.nan})
    if args.json:
        print(json.dumps(_json_safe(result), indent=2, allow_nan=False), flush=True)
    else:
        print(summary_line(result).replace("pynodeta summary", prog, 1), flush=True)
        if blocks is not None:
            cache = f" (cache {args.cache})" if args.cache else ""
            print(f"{prog}: blocks of {blocks.block_size} images over {ranks.world_size} rank(s): {blocks.drawn} "
                  f"drawn, {blocks.cached} read from the cache{cache}", flush=True)
    return 0


def _raise(error: Exception):
    raise error


def _prepare(args, prog: str, ranks: EvaluationRanks):
    """(module, datamodule or None, weights, evaluate_samples' options, BlockDraw or None); None after
    --write-reference-stats."""
    from .block_draw import BlockDraw
    from .diffusion_evaluation import EVALUATION_SEED, _extractor
    from .diffusion_sampling import resolved_sampler_options
    from .latent_runs import display_decoder, run_decoder
    from .sample_blocks import DEFAULT_BLOCK_SIZE

    extractor, reference_stats = _features(args)  # files checked before the run is loaded
    run, weights = _setup(args, prog)
    module, datamodule = run.module, run.datamodule
    if extractor is not None:
        extractor.to(module.device)  # features where the images are drawn (a GPU's Inception: round-off apart)
    if args.write_reference_stats:
        if datamodule is None:
            raise ValueError(f"{args.checkpoint!r}: the run names no DataModule, so there are no training images "
                             f"to take statistics of; pass the run's config with --config")
        _write_reference_stats(args, prog, module, datamodule, extractor)
        return None
    decoder = None
    if display_decoder(datamodule) is None:
        decoder = run_decoder(run, args.vae, module.device)
    if datamodule is None:
        _check_without_data(args, module, extractor, reference_stats, decoder)
    else:
        datamodule.setup("test")
    _check_likelihood_arguments(args, module, datamodule)
    sampler = args.sampler or module.evaluation.sampler
    _check_steps(args, sampler)
    options = {"extractor": extractor, "reference_stats": reference_stats, "solver": _solver(args),
               "seed": EVALUATION_SEED if args.seed is None else args.seed, "precision": args.precision,
               "sampler_options": resolved_sampler_options(module, sampler, args.sampler_options, "--sampler-option"),
               **_conditioning(args, module)}
    if decoder is not None:
        options["decode"] = decoder.decode_to_unit_range
    blocks = None
    if ranks.world_size > 1 or any(value is not None for value in (args.devices, args.cache, args.block_size)):
        cache = None
        if args.cache is not None:
            cache = _cache(args, module, weights, options, extractor or _extractor(module), decoder)
        blocks = BlockDraw(args.block_size or DEFAULT_BLOCK_SIZE, ranks, cache, progress_seconds=30.0, label=prog)
    return module, datamodule, weights, options, blocks


def _check_likelihood_arguments(args, module, datamodule) -> None:
    """--nll-images and --vlb-timesteps against the run, before anything is drawn: neither is cut down or dropped
    silently."""
    from .diffusion_evaluation import _pixel_test_set
    from .objectives import DDPMObjective

    if args.vlb_timesteps is not None and not isinstance(module.objective, DDPMObjective):
        raise UsageError(f"--vlb-timesteps {args.vlb_timesteps}: the variational bound is defined for the DDPM "
                         f"objective, and this run trains with {type(module.objective).__name__}; drop "
                         f"--vlb-timesteps (the NLL in bits/dim is computed for every run)")
    terms = module.objective.schedule.num_timesteps - 1 if args.vlb_timesteps is not None else None
    if terms is not None and terms > 0 and args.vlb_timesteps > terms:  # as variational_bound counts them
        raise UsageError(f"--vlb-timesteps {args.vlb_timesteps} exceeds the T − 1 = {terms} KL terms of this run's "
                         f"schedule; pass at most {terms}, or leave --vlb-timesteps out for the exact sum over all "
                         f"timesteps")
    test = _pixel_test_set(module, datamodule) if datamodule is not None and args.nll_images is not None else None
    if test is not None and args.nll_images > len(test.images):
        raise UsageError(f"--nll-images {args.nll_images}: the run's test split has {len(test.images)} images; "
                         f"pass --nll-images {len(test.images)} or fewer")


def _check_without_data(args, module, extractor, reference_stats, decoder) -> None:
    """A run without a DataModule (a released NVlabs .pkl, a checkpoint without config) has no test images: its
    FD needs saved statistics and the features they were computed in."""
    from .diffusion_evaluation import _extractor

    fix = "" if str(args.checkpoint).endswith(".pkl") else " or, for a pynodeta run, its config with --config"
    if reference_stats is None:
        raise ValueError(f"{args.checkpoint!r}: the run names no DataModule, so there are no test images to score "
                         f"against; pass --reference-stats FILE (the real data's statistics in the features of "
                         f"--inception-weights or --dinov2-weights){fix}")
    if extractor is None and (decoder is not None or _extractor(module) is None):
        raise ValueError("--reference-stats needs the features its statistics were computed in: pass "
                         "--inception-weights or --dinov2-weights")
    if decoder is None and module.sample_shape[0] not in (1, 3):
        raise ValueError(f"the network draws {module.sample_shape[0]}-channel latents; pass --vae DIR to decode "
                         f"them into the images the features are taken of")


def _cache(args, module, weights: str, options: dict, extractor, decoder):
    """The SampleCache of --cache: its identity is everything that fixes a block's scores."""
    from .diffusion_sampling import requested_labels
    from .sample_blocks import DEFAULT_BLOCK_SIZE
    from .sample_cache import SampleCache, file_sha256

    evaluation = module.evaluation
    labels = options.get("class_labels")
    requested_labels(labels, 1, module.num_classes)  # a bad class is refused before the index is written
    features = (f"inception:{os.path.abspath(args.inception_weights)}" if args.inception_weights else
                f"dinov2:{os.path.abspath(args.dinov2_weights)}" if args.dinov2_weights else
                type(extractor).__name__ if extractor is not None else None)
    identity = {"checkpoint_sha256": file_sha256(args.checkpoint), "weights": weights,
                "sampler": args.sampler or evaluation.sampler,
                "steps": evaluation.steps if args.steps is None else args.steps,
                "solver": repr(options["solver"]), "seed": options["seed"], "precision": options["precision"],
                "class_labels": labels, "guidance": options.get("guidance"),
                "block_size": args.block_size or DEFAULT_BLOCK_SIZE, "features": features,
                "decoder": None if decoder is None else str(decoder.source),
                "sample_shape": list(module.sample_shape)}
    if options["sampler_options"]:  # only when set, so that caches written before options existed still resume
        identity["sampler_options"] = options["sampler_options"]
    return SampleCache(args.cache, identity)


def _features(args):
    """(the extractor the flags name or None for the run's, the reference (mu, sigma) or None)."""
    from pynodeta.metrics import DINOv2FeatureExtractor, InceptionFeatureExtractor, load_reference_statistics

    extractor = None
    if args.dinov2_weights:
        extractor = DINOv2FeatureExtractor(args.dinov2_weights)
    elif args.inception_weights:
        extractor = InceptionFeatureExtractor(args.inception_weights)
    reference = None
    if args.reference_stats:
        reference = load_reference_statistics(args.reference_stats, "fd_dinov2" if args.dinov2_weights else "fid")
    return extractor, reference


def _write_reference_stats(args, prog: str, module, datamodule, extractor) -> None:
    from pynodeta.metrics import save_reference_statistics

    from .diffusion_evaluation import _extractor, dataset_statistics
    from .latent_runs import display_decoder

    if display_decoder(datamodule) is not None:
        raise UsageError("--write-reference-stats reads the run's training images, but this run trained on VAE "
                         "latents: write them from the image folder the latents were encoded from (a pixel run's "
                         "config, e.g. ImageFolderDataModule) or use published statistics (pytorch-fid's .npz, "
                         "edm2's dataset-refs .pkl)")
    extractor = extractor if extractor is not None else _extractor(module)
    if extractor is None:
        raise UsageError("--write-reference-stats needs features: pass --inception-weights or --dinov2-weights")
    datamodule.setup("fit")
    mu, sigma = dataset_statistics(datamodule.train_set, extractor)
    path = save_reference_statistics(args.write_reference_stats, mu, sigma)
    print(f"{prog}: statistics of {len(datamodule.train_set)} training images ({len(mu)} features) -> {path}")


def _json_safe(value):
    """NaN and Inf as null: the JSON standard has no such numbers, and strict parsers refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def evaluate_main(argv: list[str]) -> int:
    """``pynodeta evaluate ...``; returns the exit status."""
    return _run(_evaluate, argv, "pynodeta evaluate")
