"""Weight averages in a Lightning checkpoint: one entry, written the same way for every kind.

``checkpoint["pynodeta_weight_averages"] = {kind: {"target": "model", "state": average.state_dict()}}``
with ``kind`` ``"ema"`` (the classic EMA a DiffusionModule keeps) or ``"power_ema"`` (the
power-function EMA of :class:`~pynodeta.train.ema_callback.PowerFunctionEMACallback`). ``target`` is
the attribute of the LightningModule holding the averaged network. :func:`stored_averages` rebuilds
them around a network, so that ``pynodeta sample``/``evaluate`` can use what training averaged.
Checkpoints written before this entry existed keep the classic EMA under ``pynodeta_ema`` and the
power-function EMA in the callback's state; both are read too.
"""

from __future__ import annotations

from torch import nn

from pynodeta.ema import EMA, PowerFunctionEMA, WeightAverage

__all__ = ["AVERAGES_KEY", "store_average", "stored_average_state", "stored_averages"]

AVERAGES_KEY = "pynodeta_weight_averages"
_KINDS = {"ema": EMA, "power_ema": PowerFunctionEMA}
_LEGACY_EMA_KEY = "pynodeta_ema"
_LEGACY_CALLBACK = "PowerFunctionEMACallback"


def store_average(checkpoint: dict, kind: str, average: WeightAverage, target: str = "model") -> None:
    """Put ``average`` (of the network at attribute ``target``) into ``checkpoint`` as ``kind``."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    checkpoint.setdefault(AVERAGES_KEY, {})[kind] = {"target": target, "state": average.state_dict()}


def _records(checkpoint: dict) -> dict[str, dict]:
    records = dict(checkpoint.get(AVERAGES_KEY) or {})
    if "ema" not in records and isinstance(checkpoint.get(_LEGACY_EMA_KEY), dict):
        records["ema"] = {"target": "model", "state": checkpoint[_LEGACY_EMA_KEY]}
    if "power_ema" not in records:
        for name, state in (checkpoint.get("callbacks") or {}).items():
            if str(name).startswith(_LEGACY_CALLBACK) and state:
                records["power_ema"] = {"target": "model", "state": state}
    return records


def stored_average_state(checkpoint: dict, kind: str) -> dict | None:
    """The saved state of the average ``kind``, or None when the checkpoint holds none."""
    record = _records(checkpoint).get(kind)
    return None if record is None else record["state"]


def stored_averages(checkpoint: dict, module: nn.Module) -> list[tuple[str, WeightAverage]]:
    """The checkpoint's weight averages, rebuilt around the networks of ``module`` (its LightningModule),
    as (attribute of the averaged network, average) pairs."""
    averages = []
    for kind, record in _records(checkpoint).items():
        if kind not in _KINDS:
            raise ValueError(f"the checkpoint stores a weight average of unknown kind {kind!r}; "
                             f"known: {sorted(_KINDS)}")
        target = record.get("target", "model")
        try:
            network = module.get_submodule(target)
        except AttributeError:
            raise ValueError(f"the checkpoint's weight average belongs to the attribute {target!r}, which the rebuilt "
                             f"module does not have; pass the run's own config") from None
        state = record["state"]
        average = EMA(network, state["decay"]) if kind == "ema" else PowerFunctionEMA(network, state["sigma_rels"])
        average.load_state_dict(state)
        averages.append((target, average))
    return averages

