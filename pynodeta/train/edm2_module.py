"""``EDM2DiffusionModule``: ``DiffusionModule`` trained with EDM2's objective — the learned-uncertainty
loss around ``EDM2Precond`` (ln σ ~ N(−0.4, 1)), Adam (0.9, 0.99) with the inverse-square-root schedule —
and sampled with a power-function EMA tracked by ``PowerFunctionEMACallback``."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from pynodeta.diffusion.edm2 import EDM2Precond, edm2_loss
from pynodeta.ema.average import RAW_WEIGHTS, sigma_rel_key

from .diffusion import DiffusionModule
from .edm2_optim import EDM2Adam
from .ema_callback import PowerFunctionEMACallback
from .optim import OptimizerPreset

__all__ = ["EDM2DiffusionModule"]


class EDM2DiffusionModule(DiffusionModule):
    """The network ``model`` (forward(c_noise, x), e.g. ``EDM2UNet``) trained as EDM2.

    The uncertainty head u(σ) is ``self.uncertainty``; the network stays ``self.model`` alone, so
    checkpoints and EMA snapshots hold its weights under ``model.`` exactly once. Validation, samples
    and the final summary use the EMA profile ``ema_sigma_rel`` of the ``PowerFunctionEMACallback`` in
    the trainer's callbacks (raw weights without one).
    """

    def __init__(
        self,
        model: nn.Module,                             # F(c_noise, x), e.g. EDM2UNet
        sigma_data: float = 0.5,
        p_mean: float = -0.4,                         # ln σ ~ N(p_mean, p_std²) in training (EDM2 ImageNet-512)
        p_std: float = 1.0,
        logvar_channels: int = 128,                   # Fourier features of u(σ)
        ema_sigma_rel: float | None = 0.10,           # tracked EMA profile used for evaluation; None: raw weights
        sample_shape: Sequence[int] | None = None,
        optim: OptimizerPreset | None = None,         # default EDM2Adam()
        sampler: str = "heun",
        sampler_steps: int = 32,                      # EDM2: Heun with 32 levels (63 evaluations)
        eval_every_n_epochs: int = 1,
        eval_num_samples: int = 512,
        nll_num_images: int = 64,
        num_bins: int = 256,
    ):
        super().__init__(model, objective="edm", sigma_data=sigma_data, p_mean=p_mean, p_std=p_std,
                         sample_shape=sample_shape, optim=optim if optim is not None else EDM2Adam(),
                         ema_decay=None, sampler=sampler, sampler_steps=sampler_steps,
                         eval_every_n_epochs=eval_every_n_epochs, eval_num_samples=eval_num_samples,
                         nll_num_images=nll_num_images, num_bins=num_bins)
        precond = EDM2Precond(model, sigma_data, logvar_channels)
        self.uncertainty = nn.ModuleDict({"fourier": precond.logvar_fourier, "linear": precond.logvar_linear})
        # A view, not a child: its network is self.model and its head self.uncertainty (registered above).
        object.__setattr__(self, "_precond", precond)
        self.ema_sigma_rel = ema_sigma_rel

    @property
    def evaluation_average(self) -> str:
        """``"sigma_rel=<ema_sigma_rel>"``, or ``"none"`` when evaluating with the raw weights."""
        return RAW_WEIGHTS if self.ema_sigma_rel is None else sigma_rel_key(self.ema_sigma_rel)

    def denoiser(self) -> nn.Module:
        return self._precond

    def _loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return edm2_loss(self._precond, x0, p_mean=self.p_mean, p_std=self.p_std, generator=generator).mean()

    def _ema_callback(self) -> PowerFunctionEMACallback | None:
        if self._trainer is None:
            return None
        found = [c for c in self.trainer.callbacks if isinstance(c, PowerFunctionEMACallback) and c.ema is not None]
        return found[0] if found else None

    @contextlib.contextmanager
    def ema_weights(self):
        """Within the block the network holds the EMA profile ``ema_sigma_rel`` (raw weights without the callback)."""
        callback = self._ema_callback()
        if callback is None or self.ema_sigma_rel is None or callback.ema.step == 0:
            yield
            return
        raw = [p.detach().clone() for p in self.model.parameters()]
        averaged = callback.averaged(self.ema_sigma_rel)
        with torch.no_grad():
            for param, average in zip(self.model.parameters(), averaged.parameters()):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.model.parameters(), raw):
                    param.copy_(saved)
