"""Do these snapshots belong to this checkpoint? ``pynodeta phema --checkpoint`` asks before it writes.

A reconstruction written into a checkpoint of another run (same architecture, other weights) or of
a narrower network would be a silent wrong result, or a file that fails later. So the checkpoint's
power-function EMA must carry the snapshots' run identity, the reconstruction step must not lie
beyond the checkpoint's own step, and every tensor of the snapshots must have the shape of the
checkpoint's network tensor of the same name.
"""

from __future__ import annotations

from collections.abc import Sequence

from .snapshots import SnapshotInfo

__all__ = ["check_same_run"]


def check_same_run(checkpoint: dict, snapshots: Sequence[SnapshotInfo], step: int, target: str, path) -> None:
    """ValueError naming ``path`` unless the snapshots are of the run, step and network of ``checkpoint``."""
    from pynodeta.train.weight_averages import stored_average_state

    weights = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no state_dict); pass the run's checkpoint")
    ema = stored_average_state(checkpoint, "power_ema")
    if ema is None:
        raise ValueError(f"{str(path)!r} holds no power-function EMA, so it cannot be matched to the snapshots; "
                         f"pass a checkpoint of the run that wrote them (trained with PowerFunctionEMACallback)")
    run_id = snapshots[0].run_id
    if str(ema.get("run_id")) != run_id:
        raise ValueError(f"the snapshots are of run {run_id} but {str(path)!r} is a checkpoint of run "
                         f"{ema.get('run_id')}; pass a checkpoint of the run that wrote the snapshots")
    checkpoint_step = checkpoint.get("global_step")
    if checkpoint_step is not None and step > int(checkpoint_step):
        raise ValueError(f"the reconstruction is at step {step}, beyond the checkpoint's step {checkpoint_step} "
                         f"({str(path)!r}); pass a later checkpoint of the run, or --step {checkpoint_step}")
    prefix = f"{target}."
    for name, shape, _ in snapshots[0].fingerprint:
        stored = weights.get(prefix + name)
        if stored is None:
            raise ValueError(f"{str(path)!r} has no tensor {prefix}{name}, which the snapshots hold: they are of "
                             f"another network, or it lives under another attribute (--target)")
        if tuple(stored.shape) != tuple(shape):
            raise ValueError(f"{prefix}{name} has shape {tuple(shape)} in the snapshots but {tuple(stored.shape)} "
                             f"in {str(path)!r}: the snapshots are of another network")
