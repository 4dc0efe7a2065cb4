"""Post-hoc EMA from NVlabs/edm2's snapshot pickles (``network-snapshot-<kimg>-<σ_rel>.pkl``, as
``training_loop.py`` writes them and ``reconstruct_phema.py`` reads them), read without executing them.

The profiles are combined with pynodeta's :func:`~pynodeta.ema.posthoc_coefficients` at NVlabs' training
times in images (``kimg_to_nimg`` of reconstruct_phema.py); parameters are combined in float32, buffers
(the Fourier features, constant in training) are the last snapshot's, as in ``reconstruct_phema``. The
result is written as a plain ``torch.save`` payload (:data:`RELEASED_FORMAT`: the network's class, init
arguments and tensors under NVlabs' names) that ``pynodeta sample --checkpoint`` reads with
``weights_only=True``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .nvlabs_pickle import module_tensors
from .released_edm2 import (
    PRECOND_ARGUMENTS,
    ReleasedEDM2,
    edm2_from_arguments,
    encoder_data,
    nvlabs_arguments,
    read_released_edm2,
)

__all__ = ["RELEASED_FORMAT", "NVlabsSnapshot", "list_nvlabs_snapshots", "reconstruct_nvlabs_phema",
           "released_from_payload"]

RELEASED_FORMAT = "pynodeta.released_edm2/1"
SNAPSHOT_NAME = re.compile(r"(.*)-(\d+)-(\d+\.\d+)\.pkl")   # reconstruct_phema.py's list_input_pickles


@dataclass(frozen=True)
class NVlabsSnapshot:
    path: Path
    prefix: str          # e.g. "network-snapshot"
    kimg: int            # training time in thousands of images, as in the file name
    sigma_rel: float     # the profile's width ("std" in NVlabs' code)

    @property
    def nimg(self) -> int:
        """Images seen, as NVlabs recovers it from the name (kimg_to_nimg: batches of 1024 images)."""
        return (self.kimg * 1000 + 999) // 1024 * 1024


def list_nvlabs_snapshots(directory: str | os.PathLike, prefix: str | None = None) -> list[NVlabsSnapshot]:
    """The snapshot pickles in ``directory``, by (kimg, σ_rel); all of one prefix (``prefix`` picks one)."""
    found = []
    for path in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []:
        match = SNAPSHOT_NAME.fullmatch(path.name)
        if match and path.is_file() and (prefix is None or match.group(1) == prefix):
            found.append(NVlabsSnapshot(path, match.group(1), int(match.group(2)), float(match.group(3))))
    prefixes = sorted({snapshot.prefix for snapshot in found})
    if len(prefixes) > 1:
        raise ValueError(f"{str(directory)!r} holds snapshots of several prefixes {prefixes}; pick one (--prefix)")
    return sorted(found, key=lambda s: (s.kimg, s.sigma_rel))


def reconstruct_nvlabs_phema(directory: str | os.PathLike, sigma_rel: float, kimg: int | None = None,
                             prefix: str | None = None) -> dict:
    """The EMA of width ``sigma_rel`` at ``kimg`` (default: the last snapshot's) from every snapshot up to it,
    as a :data:`RELEASED_FORMAT` payload."""
    from pynodeta.ema import posthoc_coefficients

    snapshots = list_nvlabs_snapshots(directory, prefix)
    if not snapshots:
        raise ValueError(f"no NVlabs snapshot pickles (<prefix>-<kimg>-<sigma_rel>.pkl) in {str(directory)!r}")
    kimg = snapshots[-1].kimg if kimg is None else int(kimg)
    if not any(snapshot.kimg == kimg for snapshot in snapshots):
        raise ValueError(f"no snapshot at {kimg} kimg in {str(directory)!r}; the reconstruction time must be one of "
                         f"{sorted({s.kimg for s in snapshots})}")
    used = [snapshot for snapshot in snapshots if 0 < snapshot.kimg <= kimg]
    weights = posthoc_coefficients([s.nimg for s in used], [s.sigma_rel for s in used], used[-1].nimg, sigma_rel)
    total: dict[str, torch.Tensor] = {}
    for snapshot, weight in zip(used, weights.tolist()):
        content = read_released_edm2(snapshot.path)
        network = content["ema"]
        # built once per file: the mapping checks every snapshot's tensors, names and shapes
        built, _ = edm2_from_arguments(network.class_name, nvlabs_arguments(network, PRECOND_ARGUMENTS),
                                       module_tensors(network), f"{str(snapshot.path)!r}")
        parameters = {name for name, _ in built.named_parameters()}
        tensors = module_tensors(network)
        if total and set(tensors) != set(total):
            raise ValueError(f"{str(snapshot.path)!r} holds another network than the earlier snapshots; keep the "
                             f"snapshots of one training run in the folder")
        for name, value in tensors.items():
            mapped = "net." + name[len("unet."):] if name.startswith("unet.") else name
            if mapped in parameters:
                total[name] = total.get(name, torch.zeros(value.shape)) + weight * value.detach().float()
            else:
                total[name] = value.detach().float()  # buffers: the last snapshot's, as reconstruct_phema copies them
        last = (network, content.get("encoder"))
    arguments = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                 for k, v in nvlabs_arguments(last[0], PRECOND_ARGUMENTS).items()}
    return {"format": RELEASED_FORMAT, "class_name": last[0].class_name, "arguments": arguments, "tensors": total,
            "encoder": encoder_data(last[1]), "posthoc": {"sigma_rel": float(sigma_rel), "step": f"{kimg} kimg"}}


def released_from_payload(payload: dict, path: str | os.PathLike) -> ReleasedEDM2:
    """A :data:`RELEASED_FORMAT` payload (read with ``weights_only=True``) as a :class:`ReleasedEDM2`."""
    where = f"{str(path)!r}"
    missing = [key for key in ("class_name", "arguments", "tensors") if key not in payload]
    if payload.get("format") != RELEASED_FORMAT or missing:
        raise ValueError(f"{where} is not a {RELEASED_FORMAT} file (missing {missing})")
    network, use_fp16 = edm2_from_arguments(payload["class_name"], payload["arguments"], payload["tensors"], where)
    return ReleasedEDM2(network, use_fp16, payload.get("encoder"), Path(path))
