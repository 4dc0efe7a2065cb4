"""``pynodeta phema``: post-hoc EMA from a run's snapshots.

    pynodeta phema --snapshots DIR --sigma-rel 0.07 --out model.pt [--checkpoint run.ckpt]
    pynodeta phema --snapshots DIR --sweep 0.02:0.20:0.01 --checkpoint run.ckpt --out-dir sweep/
    pynodeta phema --snapshots NVLABS_RUN_DIR --sigma-rel 0.135 --out edm2-phema.pt   # NVlabs/edm2 snapshots

With ``--checkpoint`` (a Lightning checkpoint of the run), ``--out`` is that checkpoint with the
network's weights replaced by the reconstruction, so every command that reads checkpoints can use it;
without, ``--out`` holds ``{"state_dict", "sigma_rel", "step"}``. The sweep draws samples from each
reconstruction with the module's own evaluation and scores it by the Fréchet distance (digits features
for 8×8 digits, Inception where the module names its weights), beside the real-data floor.
Exit status 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .._atomic import atomic_torch_save, atomic_write_text
from .._cli import ArgumentParser, UsageError
from .average import POSTHOC_KEY
from .posthoc import posthoc_reconstruct
from .run_match import check_same_run
from .snapshots import list_snapshots
from .sweep import parse_sweep, sweep_sigma_rels, write_sweep

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="pynodeta phema", description="Post-hoc EMA reconstruction (Karras et al. 2024, "
                     "Sec. 3): any EMA length σ_rel from the power-function snapshots of one training run.")
    parser.add_argument("--snapshots", required=True, help="directory of phema-<step>.pt snapshot files, or of "
                        "NVlabs/edm2's <prefix>-<kimg>-<sigma_rel>.pkl snapshots (read as data, never executed)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sigma-rel", type=float, help="EMA length to reconstruct, e.g. 0.07")
    what.add_argument("--sweep", help="start:stop:step of EMA lengths to reconstruct and score, e.g. 0.02:0.20:0.01")
    parser.add_argument("--step", type=int, default=None, help="training step to reconstruct at (default: last); "
                        "for NVlabs/edm2 snapshot pickles, their kimg")
    parser.add_argument("--prefix", default=None, help="NVlabs/edm2 snapshots: the file-name prefix to use where the "
                        "folder holds several (e.g. network-snapshot for <prefix>-<kimg>-<sigma_rel>.pkl)")
    parser.add_argument("--out", help="output file of --sigma-rel")
    parser.add_argument("--out-dir", default="phema_sweep", help="output directory of --sweep (CSV, PNG, JSON)")
    parser.add_argument("--checkpoint", help="Lightning checkpoint of the same run (read with weights_only=True; "
                                             "its run, step and tensor shapes must match the snapshots)")
    parser.add_argument("--target", default="model", help="attribute of the network in the LightningModule")
    parser.add_argument("--num-samples", type=int, default=512, help="--sweep: images drawn per σ_rel (>= 2)")
    parser.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                        help="a module besides pynodeta whose classes the run's files may name; repeatable")
    parser.add_argument("--unsafe-load", action="store_true",
                        help="unpickle the checkpoint with weights_only=False, which runs any code it holds; only "
                             "for files you made or fully trust")
    parser.add_argument("--sampler", default=None, help="--sweep: sampler (default: the module's)")
    parser.add_argument("--steps", type=int, default=None, help="--sweep: sampler steps (default: the module's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.num_samples < 2:
            raise UsageError(f"--num-samples must be >= 2 (the Fréchet distance estimates a covariance), got "
                             f"{args.num_samples}")
        if args.unsafe_load:
            print("pynodeta phema: warning: --unsafe-load unpickles the checkpoint with torch.load(weights_only="
                  "False), which runs any code it contains; use it only on files you made or fully trust",
                  file=sys.stderr)
        _check_output(args.out if args.sigma_rel is not None else args.out_dir, "--out" if args.sigma_rel is not None
                      else "--out-dir", folder=args.sigma_rel is None)
        if args.sigma_rel is not None:
            _reconstruct_one(args)
        else:
            _sweep(args)
    except (UsageError, ValueError, FileNotFoundError, KeyError) as error:
        print(f"pynodeta phema: error: {error}", file=sys.stderr)
        return 2
    return 0


def _check_output(path: str | None, option: str, folder: bool) -> None:
    """Refuse an output that cannot be written before any reconstruction work."""
    if path is None:
        return
    out = Path(path)
    blocking = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UsageError(f"{option} {path!r}: {str(blocking)!r} is a file, not a folder")
    if out.exists() and out.is_dir() != folder:
        raise UsageError(f"{option} {path!r} is {'a file' if folder else 'a folder'}; name "
                         f"{'a folder' if folder else 'a file'}")


def _reconstruct_one(args) -> None:
    if not args.out:
        raise UsageError("--sigma-rel needs --out FILE for the reconstructed weights")
    if _nvlabs_snapshots(args.snapshots, args.prefix):
        _reconstruct_nvlabs(args)
        return
    snapshots = list_snapshots(args.snapshots)
    step = args.step if args.step is not None else snapshots[-1].step
    payload = None
    if args.checkpoint:  # checked against the snapshots before the reconstruction's work
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="--unsafe-load")  # printed once by main()
            payload = read_run_checkpoint(args.checkpoint, unsafe=args.unsafe_load, allow_modules=args.allow_module)
        check_same_run(payload, snapshots, step, args.target, args.checkpoint)
    state = posthoc_reconstruct(args.snapshots, args.sigma_rel, args.step)
    if payload is not None:
        _replace_network_weights(payload, state, args.target, args.checkpoint)
        payload[POSTHOC_KEY] = {"sigma_rel": args.sigma_rel, "step": step}
        _store_run_config(payload, Path(args.checkpoint))
    else:
        payload = {"state_dict": state, "sigma_rel": args.sigma_rel, "step": step}
    atomic_torch_save(payload, Path(args.out))
    print(f"wrote {args.out}: σ_rel {args.sigma_rel} at step {step}")


def _nvlabs_snapshots(folder: str, prefix: str | None) -> bool:
    """Whether ``folder`` holds NVlabs/edm2 snapshot pickles (``network-snapshot-<kimg>-<σ_rel>.pkl``)."""
    from pynodeta.diffusion.released_phema import list_nvlabs_snapshots

    return bool(list_nvlabs_snapshots(folder, prefix))


def _reconstruct_nvlabs(args) -> None:
    """NVlabs/edm2's snapshots, read as data (their code never runs): --step counts kimg, as their file names."""
    from pynodeta.diffusion.released_phema import reconstruct_nvlabs_phema

    if args.checkpoint:
        raise UsageError(f"--checkpoint: {args.snapshots!r} holds NVlabs/edm2 snapshot pickles, which carry their "
                         f"network; drop --checkpoint")
    payload = reconstruct_nvlabs_phema(args.snapshots, args.sigma_rel, args.step, args.prefix)
    atomic_torch_save(payload, Path(args.out))
    print(f"wrote {args.out}: σ_rel {args.sigma_rel} at {payload['posthoc']['step']} (NVlabs/edm2 snapshots); "
          f"draw from it with `pynodeta sample --checkpoint {args.out}`")


def _replace_network_weights(checkpoint: dict, state: dict, target: str, path: str) -> None:
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, dict):
        raise ValueError(f"{path!r} is not a Lightning checkpoint (no state_dict)")
    prefix = f"{target}."
    missing = [name for name in state if prefix + name not in weights]
    if missing:
        raise ValueError(f"{path!r} has no entries {prefix}{missing[0]} (and {len(missing) - 1} more): the snapshots "
                         f"are of another network, or it lives under another attribute (--target)")
    for name, value in state.items():
        weights[prefix + name] = value.to(weights[prefix + name].dtype)


def _store_run_config(payload: dict, checkpoint: Path) -> None:
    """The run's config.yaml, kept in the output: it then loads wherever it is written, not only beside the
    run's checkpoints (``sample``/``evaluate`` read it back as they would the file beside a checkpoint)."""
    from pynodeta.train.run_loader import RUN_CONFIG_KEY, find_run_config

    config = find_run_config(checkpoint)
    if config is not None:
        payload[RUN_CONFIG_KEY] = config.read_text()


def read_run_checkpoint(path, *, unsafe: bool, allow_modules):
    from pynodeta.train.run_loader import read_run_checkpoint as read  # the one trust policy; Lightning on demand

    return read(path, unsafe=unsafe, allow_modules=allow_modules)


def _sweep(args) -> None:
    if _nvlabs_snapshots(args.snapshots, args.prefix):
        raise UsageError("--sweep scores pynodeta runs; for NVlabs/edm2 snapshots reconstruct each σ_rel with "
                         "--sigma-rel and score the results with their own tools")
    if not args.checkpoint:
        raise UsageError("--sweep needs --checkpoint (the run's Lightning checkpoint) to rebuild and sample the model")
    from .sweep_fd import fd_scorer

    sigma_rels = parse_sweep(args.sweep)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="--unsafe-load")  # printed once by main()
        score, read_floor = fd_scorer(args.checkpoint, args.snapshots, args.target, args.num_samples, args.sampler,
                                      args.steps, Path(args.out_dir), allow_modules=args.allow_module,
                                      unsafe=args.unsafe_load)
    rows = sweep_sigma_rels(args.snapshots, sigma_rels, score, args.step)
    floor = read_floor()
    paths = write_sweep(rows, args.out_dir, "FD", reference={"real-data floor": floor})
    best = min(rows, key=lambda r: r["score"])
    summary = {"rows": rows, "fd_floor": floor, "best_sigma_rel": best["sigma_rel"], "best_fd": best["score"]}
    atomic_write_text(Path(args.out_dir) / "sweep.json", json.dumps(summary, indent=2))
    print(f"best σ_rel {best['sigma_rel']:.3f}: FD {best['score']:.4g} (floor {floor:.4g}); wrote {paths['csv']}, "
          f"{paths['png']}")
