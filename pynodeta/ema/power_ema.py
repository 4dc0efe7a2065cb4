"""Power-function EMA tracked during training (Karras et al. 2024, Sec. 3.1; NVlabs/edm2 phema.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch
from torch import nn

from .._atomic import atomic_torch_save
from .average import float32_copy, parse_sigma_rel_key, sigma_rel_key
from .profiles import check_sigma_rel, power_function_beta, sigma_rel_to_gamma
from .snapshots import SNAPSHOT_FORMAT, snapshot_path, state_fingerprint

__all__ = ["PowerFunctionEMA"]


class PowerFunctionEMA:
    """Averages of a module's parameters under power-function profiles p(τ) ∝ τ^γ, one per σ_rel.

    Call ``update(step)`` after each optimiser step with ``step`` = optimiser steps done (1, 2, ...).
    The released code counts training images instead of steps; only the ratio Δt/t enters β, so
    with a fixed batch size the two are the same. Buffers (e.g. BatchNorm statistics) are not
    averaged: ``averaged()`` copies them from the live module, as the released code does.
    """

    def __init__(
        self,
        module: nn.Module,                               # the live network (trained in place)
        sigma_rels: tuple[float, ...] = (0.05, 0.10),   # profile widths tracked; the paper stores these two
    ):
        if len(sigma_rels) == 0:
            raise ValueError("sigma_rels must name at least one profile width, e.g. (0.05, 0.10)")
        self.sigma_rels = tuple(check_sigma_rel(s, "sigma_rels entries") for s in sigma_rels)
        if len(set(self.sigma_rels)) != len(self.sigma_rels):
            raise ValueError(f"sigma_rels must be distinct, got {sigma_rels}")
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.module = module
        self.step = 0
        self.run_id = uuid.uuid4().hex  # snapshots of one run carry it; resume keeps it
        self._averages = [self._frozen_copy(module) for _ in self.sigma_rels]

    @staticmethod
    def _frozen_copy(module: nn.Module) -> nn.Module:
        # Eval mode for good: EDM2's MPConv renormalises its stored weight in training mode (forced
        # weight normalisation), which would corrupt an averaged copy.
        # float32 at least, also for a network held in bf16/fp16: a late update's share 1 − β (≈ γ/t, 1e-4 and
        # below) is lost to bf16's 2⁻⁸ relative spacing (NVlabs/edm2 phema.py averages float32 parameters)
        return float32_copy(module).eval()

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the live parameters in after optimiser step ``step`` (≥ 1, larger than the last one)."""
        if isinstance(step, bool) or int(step) != step:
            raise TypeError(f"step must be an integer count of optimiser steps, got {step!r}")
        step = int(step)
        if step < 1 or step <= self.step:
            raise ValueError(f"update(step) needs step >= 1 and larger than the last update's step ({self.step}), "
                             f"got {step}; pass the number of optimiser steps done so far")
        live = [p for p in self.module.parameters()]
        for gamma, average in zip(self.gammas, self._averages):
            beta = power_function_beta(gamma, step, step - self.step)
            for p_average, p_live in zip(average.parameters(), live):
                if p_average.device != p_live.device:
                    p_average.data = p_average.data.to(p_live.device)
                p_average.lerp_(p_live.detach().to(p_average.dtype), 1.0 - beta)
        self.step = step

    def keys(self) -> tuple[str, ...]:
        """The averages held, as :meth:`averaged` takes them: ``("sigma_rel=0.05", "sigma_rel=0.1")``."""
        return tuple(sigma_rel_key(s) for s in self.sigma_rels)

    @torch.no_grad()
    def averaged(self, sigma_rel: float | str) -> nn.Module:
        """The averaged module for a tracked ``sigma_rel`` (a number or its key ``"sigma_rel=0.10"``), in
        eval mode (buffers taken from the live module).

        It is the EMA's own copy: read it, do not train it."""
        index = self._profile_index(parse_sigma_rel_key(sigma_rel) if isinstance(sigma_rel, str) else sigma_rel)
        average = self._averages[index]
        for b_average, b_live in zip(average.buffers(), self.module.buffers()):
            b_average.copy_(b_live)
        return average.eval()

    def _profile_index(self, sigma_rel: float) -> int:
        for index, tracked in enumerate(self.sigma_rels):
            if abs(tracked - float(sigma_rel)) <= 1e-9:
                return index
        raise KeyError(f"sigma_rel {sigma_rel} is not tracked (tracked: {self.sigma_rels}); "
                       "reconstruct other widths post hoc with posthoc_reconstruct(snapshot_dir, sigma_rel)")

    def state_dict(self) -> dict:
        """A copy (not views) of the averages: later updates do not change a state taken earlier."""
        averages = [{k: v.detach().clone() for k, v in average.state_dict().items()} for average in self._averages]
        return {"sigma_rels": list(self.sigma_rels), "step": self.step, "run_id": self.run_id, "averages": averages}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["sigma_rels"]) != self.sigma_rels:
            raise ValueError(f"the saved EMA tracks sigma_rels {tuple(state['sigma_rels'])}, "
                             f"this one {self.sigma_rels}; "
                             "build PowerFunctionEMA with the same sigma_rels to resume")
        for average, saved in zip(self._averages, state["averages"]):
            average.load_state_dict(saved)
        self.step, self.run_id = int(state["step"]), str(state["run_id"])

    def save_snapshot(self, directory: str | os.PathLike, step: int) -> Path:
        """Write all profiles at ``step`` (must be the last update's step) to ``directory/phema-<step>.pt``."""
        if step != self.step or step < 1:
            raise ValueError(f"save_snapshot(step={step}) but the averages are at step {self.step}; "
                             "call update(step) first and snapshot the step just updated")
        profiles = []
        for sigma_rel in self.sigma_rels:
            state = self.averaged(sigma_rel).state_dict()
            profiles.append({"sigma_rel": sigma_rel, "state_dict": {k: v.detach().cpu() for k, v in state.items()}})
        payload = {"format": SNAPSHOT_FORMAT, "run_id": self.run_id, "step": step,
                   "fingerprint": state_fingerprint(profiles[0]["state_dict"]), "profiles": profiles}
        path = snapshot_path(directory, step)
        atomic_torch_save(payload, path)
        return path
