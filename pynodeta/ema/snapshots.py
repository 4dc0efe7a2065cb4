"""Snapshot files of power-function EMA profiles: one file per snapshot step, written atomically.

A file ``phema-<step>.pt`` holds ``{"format", "run_id", "step", "fingerprint", "profiles": [{"sigma_rel",
"state_dict"}, ...]}``; ``fingerprint`` lists (name, shape, dtype) of the model's state so that files
from different models cannot be mixed in one reconstruction.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SNAPSHOT_FORMAT", "SnapshotInfo", "list_snapshots", "state_fingerprint"]

SNAPSHOT_FORMAT = "pynodeta-phema-1"
_NAME = re.compile(r"phema-(\d+)\.pt")


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    step: int
    sigma_rels: tuple[float, ...]
    run_id: str
    fingerprint: tuple


def snapshot_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"phema-{step:010d}.pt"


def state_fingerprint(state_dict: dict[str, torch.Tensor]) -> list[list]:
    """[[name, shape, dtype], ...]: what must agree between snapshots of the same model."""
    return [[name, list(value.shape), str(value.dtype)] for name, value in state_dict.items()]


def load_snapshot(path: Path) -> dict:
    """Memory-mapped: tensors are read from disk only when touched, so listing and streaming stay cheap.
    A file that is empty, truncated, not a torch.save file or not a snapshot is a ValueError naming it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - zip, pickle, mmap and EOF errors all mean a damaged file
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"snapshot {str(path)!r} cannot be read (empty, truncated or not a torch.save file: "
                         f"{detail}); remove it from the folder") from error
    if not isinstance(payload, dict) or payload.get("format") != SNAPSHOT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{str(path)!r} is not a pynodeta power-function EMA snapshot (format {found!r}, expected "
                         f"{SNAPSHOT_FORMAT!r})")
    return payload


def list_snapshots(directory: str | os.PathLike) -> list[SnapshotInfo]:
    """All snapshots in ``directory`` sorted by step; errors when there are none or they come from
    different models or training runs."""
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"snapshots directory {str(folder)!r} does not exist; pass the directory that "
                                "PowerFunctionEMA.save_snapshot (or the EMA callback) wrote to")
    infos = []
    for path in sorted(folder.iterdir()):
        if not _NAME.fullmatch(path.name):
            continue
        payload = load_snapshot(path)
        infos.append(SnapshotInfo(path, int(payload["step"]), tuple(p["sigma_rel"] for p in payload["profiles"]),
                                  payload["run_id"], _freeze(payload["fingerprint"])))
    if not infos:
        raise FileNotFoundError(f"no snapshots (phema-<step>.pt) in {str(folder)!r}; train with snapshots enabled "
                                "(e.g. the EMA callback's snapshot_every) and pass their directory")
    _check_same_model(infos)
    return sorted(infos, key=lambda info: info.step)


def _check_same_model(infos: list[SnapshotInfo]) -> None:
    first = infos[0]
    steps = [info.step for info in infos]
    if len(set(steps)) != len(steps):
        raise ValueError(f"snapshots directory holds two files for the same step ({sorted(steps)}); "
                         "keep one snapshot per step")
    for info in infos[1:]:
        if info.fingerprint != first.fingerprint:
            raise ValueError(f"snapshots directory mixes profiles from different models: {info.path.name} and "
                             f"{first.path.name} hold different parameter names or shapes; keep one model's "
                             "snapshots per directory")
        if info.run_id != first.run_id:
            raise ValueError(f"snapshots directory mixes training runs: {info.path.name} (run {info.run_id}) and "
                             f"{first.path.name} (run {first.run_id}); keep one run's snapshots per directory")


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value
