"""Where t enters a model: pynodeta's time-injecting layers by type, anything else by measurement.

A module is a measured time entry when its output varies with t while its input does not, or, for
a module taking (t, x), when its output varies with t on re-running it at one fixed x. Only the
innermost entries are kept (a container varies with t because of the entry inside it). Time added
by a module's own forward code (``conv(x) + t·v``) shows as a child whose input varies with t with
no entry before it; that module is then the entry.
"""

from __future__ import annotations

import torch

from pynodeta.nn import is_time_aware

from .estimators import offset_fraction
from .layers import channel_units, time_entry_description
from .recording import Site, seeded, share, stacked, state_tensor
from .report import Finding

__all__ = ["time_entries", "inside"]


def time_entries(model, sites: dict, times, floor: float, seed: int) -> dict:
    """{site key: (order, Finding)} for the innermost modules where t enters.

    sites: ``recording.record_over_times``'s; floor: the time share below which nothing varies.
    """
    found = {}
    for key, site in sites.items():
        description, detected_by = time_entry_description(site.module), "type"
        if description is None:
            description, detected_by = _measured_entry(model, site, times, floor, seed), "measured"
        if description is not None:
            found[key] = (site, description, detected_by)
    # An enclosing module of an entry varies with t because of it: keep only the innermost.
    entries = {k: (site.order, _entry_finding(site, description, detected_by, times, floor, seed))
               for k, (site, description, detected_by) in found.items()
               if not any(inside(other.name, site.name) for other, _, _ in found.values())}
    entries.update(_entries_in_forward_code(sites, entries, floor))
    return entries


def _entries_in_forward_code(sites: dict, entries: dict, floor: float) -> dict:
    """Time added by a module's own forward code (``conv(x) + t·v``), seen as a child whose input
    varies with t although no module before it or around it injects t: the parent is the entry."""
    added: dict = {}
    for site in sorted(sites.values(), key=lambda s: s.order):
        known = {**entries, **added}.items()
        if share(site.inputs) <= floor or any(
                order < site.order or inside(site.name, key[0]) for key, (order, _) in known):
            continue
        parent = site.name.rpartition(".")[0]
        owner = sites.get((parent, 0))
        if owner is None or owner is site:
            continue
        note = f"t enters in this module's own forward code, before {site.label} (measured)"
        finding = Finding(owner.label, type(owner.module).__name__, "time entry", "entry", note,
                          time_share_in=share(owner.inputs), time_share_out=share(owner.outputs),
                          detected_by="measured", injects=True)
        added[(parent, 0)] = (site.order - 0.5, finding)  # listed just before the child that sees t
    return added


def inside(name: str, ancestor: str) -> bool:
    """True if module ``name`` lies strictly inside module ``ancestor`` ("" is the model)."""
    return name != ancestor and (ancestor == "" or name.startswith(ancestor + "."))


def _rerun_at_fixed_input(site: Site, times, seed: int) -> list[torch.Tensor]:
    """The outputs of a (t, x) module called at its first recorded input with only t changed."""
    args, kwargs = site.calls[0]
    like = state_tensor(site.inputs[0])
    outputs = []
    for t in times:
        with seeded(seed, like.device):
            out = site.module(torch.tensor(t, dtype=like.dtype, device=like.device), *args[1:], **kwargs)
        outputs.append(state_tensor(out))
    return outputs


def _measured_entry(model, site: Site, times, floor: float, seed: int) -> str | None:
    if share(site.outputs) <= floor:
        return None
    if share(site.inputs) <= floor:
        return "output varies with t at a fixed input (measured)"
    if site.module is model or not site.calls or not is_time_aware(site.module):
        return None
    # Its input varies too: call it again at the first time's input, changing only t.
    if share(_rerun_at_fixed_input(site, times, seed)) > floor:
        return "output varies with t when re-run at a fixed input (measured)"
    return None


def _entry_finding(site: Site, description: str, detected_by: str, times, floor, seed) -> Finding:
    # The shape of the injected signal alone: at a fixed input (re-run if the input varies).
    injected = site.outputs
    if share(site.inputs) > floor and site.calls and is_time_aware(site.module):
        injected = _rerun_at_fixed_input(site, times, seed)
    stack = stacked(injected)
    fraction = None
    if stack is not None and stack.dim() >= 3 and share(injected) > floor:
        fraction = offset_fraction(channel_units(stack))
    note = description if fraction is None else \
        f"{description}; {fraction:.1%} of what it injects is a per-channel offset"
    injects = share(injected) > floor
    if not injects:
        note += "; at this input its output does not vary with t (e.g. TA-BN with constant γ, β)"
    return Finding(site.label, type(site.module).__name__, "time entry", "entry", note,
                   offset_fraction=fraction, time_share_in=share(site.inputs),
                   time_share_out=share(site.outputs), detected_by=detected_by, injects=injects)
