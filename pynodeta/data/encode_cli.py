"""``pynodeta encode``: an image folder → latent shards for latent diffusion (EDM2's ImageNet-512 pipeline).

    pynodeta encode --vae sd-vae-ft-mse/ --data imagenet/train --out latents/img512 --resolution 512
    pynodeta encode ... --device cuda --batch-size 32 --workers 8     # re-run the same command to resume

``--vae``: a folder written by diffusers' ``AutoencoderKL.save_pretrained`` (safetensors weights; nothing is
downloaded or unpickled). ``--data``: ``<class>/<images>`` folders, e.g. ImageNet's ``train/<wnid>/*.JPEG``.
Shards already whole in ``--out`` are skipped. Exit status 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._cli import ArgumentParser, UsageError, command_device
from .errors import DatasetNotFoundError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="pynodeta encode", description="Encode a class-labelled image folder into VAE "
                            "latents (the posterior's mean and std, EDM2's raw latents), in resumable shards.")
    parser.add_argument("--vae", required=True, metavar="DIR", help="a diffusers AutoencoderKL folder "
                        "(AutoencoderKL.save_pretrained: config.json + .safetensors), or a pipeline folder with vae/")
    parser.add_argument("--data", required=True, metavar="DIR", help="images in class folders: DIR/<class>/<image>")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder of the shards and index.json")
    parser.add_argument("--resolution", type=int, default=512, help="centre-crop size in pixels (default 512)")
    parser.add_argument("--shard-size", "--shard_size", dest="shard_size", type=int, default=1000,
                        help="images per shard (default 1000)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                        help="images per VAE call (default 8)")
    parser.add_argument("--workers", type=int, default=0, help="processes decoding images (default 0: this one)")
    parser.add_argument("--device", default=None, help="where the VAE runs (default: cuda if available, else cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pynodeta.train.run_dir import RunDirectoryError

    try:
        args = build_parser().parse_args(argv)
        for name, value, low in (("--resolution", args.resolution, 1), ("--shard-size", args.shard_size, 1),
                                 ("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0)):
            if value < low:
                raise UsageError(f"{name} must be >= {low}, got {value}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {args.out!r} is a file; name a folder")
        device = command_device(args.device, "--device")
        from .latent_encoding import encode_image_folder

        result = encode_image_folder(args.data, args.vae, out, resolution=args.resolution, shard_size=args.shard_size,
                                     batch_size=args.batch_size, num_workers=args.workers, device=device)
    except (UsageError, ValueError, DatasetNotFoundError, ImportError, RunDirectoryError) as error:
        print(f"pynodeta encode: error: {error}", file=sys.stderr)
        return 2
    shards = len(result["shards"])
    print(f"pynodeta encode: {result['num_images']} images, {len(result['classes'])} classes, latents "
          f"{'x'.join(map(str, result['latent_shape']))} (mean and std) in {shards} shards ({result['skipped']} "
          f"already done, {result['encoded']} encoded) -> {out}")
    return 0
