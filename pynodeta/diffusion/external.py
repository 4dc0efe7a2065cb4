"""Models trained elsewhere as pynodeta denoisers: one adapter, ``external_denoiser(model, ...)``.

It returns a module presenting pynodeta's denoiser contract, ``denoiser(x, sigma, class_labels=None) -> x̂0``
with ``sigma_min``/``sigma_max``, so every sampler in ``SAMPLERS``, ``probability_flow``, ``log_likelihood``
and guidance work on the model unchanged. Two conventions are understood:

* **diffusers** (``UNet2DModel`` and kin: ``model(sample, timestep, class_labels=...).sample``, trained on a
  discrete VP schedule): pass its ``scheduler`` (its ``betas`` and ``config.prediction_type`` are read) or
  ``betas`` and ``prediction_type``. The VE state x at σ is the VP state x/√(1 + σ²) at the timestep whose
  σ_t = √((1 − ᾱ_t)/ᾱ_t) matches σ (k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``):
  ε: D = x − σ ε̂;  v: D = x/(1 + σ²) − σ/√(1 + σ²) v̂;  sample: D = x̂0.
* **k-diffusion** (a denoiser ``model(x, sigma, **kwargs) -> x̂0``, e.g. ``K.external.DiscreteEpsDDPMDenoiser``
  or a ``Denoiser`` wrapper): used as it is; σ range from its ``sigma_min``/``sigma_max`` or the arguments,
  class labels handed over under ``label_keyword``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .denoisers import DenoiserFromEpsilon
from .schedules import DDPMSchedule

__all__ = ["DiscreteTimeDenoiser", "KDiffusionDenoiser", "PREDICTION_TYPES", "external_denoiser"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")   # diffusers' names of what a network predicts


class DiscreteTimeDenoiser(DenoiserFromEpsilon):
    """D(x, σ) of a network ``network(t, x_vp, class_labels=None)`` trained on a discrete VP schedule that
    predicts ε, v or x0 (``prediction``). σ ↦ t as ``DenoiserFromEpsilon`` (``timestep``: "nearest" or
    "interpolate"); σ outside the schedule's [sigma_min, sigma_max] is refused."""

    def __init__(self, network: nn.Module, schedule: DDPMSchedule, prediction: str = "epsilon",
                 timestep: str = "nearest"):
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"prediction must be one of {list(PREDICTION_TYPES)} (what the network predicts), "
                             f"got {prediction!r}")
        super().__init__(network, schedule, timestep)
        self.prediction = prediction

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, ...) VE state; sigma: (batch,) or scalar → x̂0, shape of x."""
        sigma, t = self.sigma_and_timesteps(sigma, x)
        sigma_b = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        scale = (1 + sigma_b**2).rsqrt()   # √ᾱ = 1/√(1 + σ²): the VP state is x·√ᾱ
        out = self.eps_model(t, x * scale, class_labels=class_labels)
        if self.prediction == "epsilon":
            return x - sigma_b * out
        if self.prediction == "v_prediction":  # x0 = √ᾱ x_vp − √(1 − ᾱ) v, with x_vp = √ᾱ x
            return x * scale**2 - sigma_b * scale * out
        return out


class _DiffusersNetwork(nn.Module):
    """``network(t, x, class_labels=None)`` over a diffusers model's ``model(x, t, class_labels=...).sample``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, t: torch.Tensor, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {} if class_labels is None else {"class_labels": _class_indices(class_labels)}
        out = self.model(x, t, **kwargs)
        out = out.sample if hasattr(out, "sample") else out[0]
        if out.shape[1] == 2 * x.shape[1]:  # a learned variance (iDDPM): the first half is the prediction
            out = out[:, : x.shape[1]]
        if out.shape != x.shape:
            raise ValueError(f"the diffusers model returned {tuple(out.shape)} for an input of {tuple(x.shape)}; "
                             f"expected the same shape (or twice the channels, with a learned variance)")
        return out


def _class_indices(class_labels: torch.Tensor) -> torch.Tensor:
    """pynodeta's one-hot rows (batch, classes) as the integer classes diffusers' class embedding takes."""
    if class_labels.ndim == 1 and not class_labels.is_floating_point():
        return class_labels
    one_hot = class_labels.ndim == 2 and bool(((class_labels == 0) | (class_labels == 1)).all()) \
        and bool((class_labels.sum(dim=1) == 1).all())
    if not one_hot:
        raise ValueError("class_labels must be integer classes (batch,) or one-hot rows (batch, classes) for a "
                         "diffusers model (its class embedding has no 'unconditional' row: all-zero rows, as "
                         "classifier-free guidance sends, cannot be passed on)")
    return class_labels.argmax(dim=1)


class KDiffusionDenoiser(nn.Module):
    """A k-diffusion denoiser ``model(x, sigma, **kwargs)`` with pynodeta's ``class_labels=`` and σ range."""

    def __init__(self, model: nn.Module, sigma_min: float, sigma_max: float, label_keyword: str = "class_labels"):
        super().__init__()
        if not 0 <= sigma_min < sigma_max:
            raise ValueError(f"need 0 <= sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.model, self.label_keyword = model, label_keyword
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        kwargs = {} if class_labels is None else {self.label_keyword: class_labels}
        return self.model(x, sigma, **kwargs)


def _is_diffusers(model) -> bool:
    return any(cls.__module__.startswith("diffusers.") for cls in type(model).__mro__)


def external_denoiser(
    model: nn.Module,                      # a diffusers model, or a k-diffusion denoiser model(x, sigma, **kwargs)
    *,
    scheduler=None,                        # diffusers: the scheduler it was trained with (betas, prediction_type)
    betas=None,                            # diffusers: the training β_t (T,), instead of a scheduler
    prediction_type: str | None = None,    # diffusers: "epsilon", "v_prediction" or "sample"; default the scheduler's
    timestep: str = "nearest",             # diffusers: σ ↦ t, "nearest" or "interpolate" (fractional t)
    sigma_min: float | None = None,        # k-diffusion: the σ range; default the model's own attributes
    sigma_max: float | None = None,
    label_keyword: str = "class_labels",   # k-diffusion: the keyword its model takes class labels under
) -> nn.Module:
    """A pynodeta denoiser ``D(x, σ, class_labels=None)`` with ``sigma_min``/``sigma_max`` around ``model``."""
    if _is_diffusers(model):
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("sigma_min/sigma_max: a diffusers model's σ range is its schedule's; pass scheduler= "
                             "(or betas=) instead")
        if (scheduler is None) == (betas is None):
            raise ValueError("a diffusers model needs its training schedule: pass scheduler= (e.g. the pipeline's "
                             "DDPMScheduler) or betas=, exactly one of them")
        if scheduler is not None:
            betas = scheduler.betas
            prediction_type = prediction_type or scheduler.config.prediction_type
        if prediction_type is None:
            raise ValueError("prediction_type: pass 'epsilon', 'v_prediction' or 'sample' along with betas=")
        return DiscreteTimeDenoiser(_DiffusersNetwork(model), DDPMSchedule.from_betas(betas), prediction_type,
                                    timestep)
    if scheduler is not None or betas is not None or prediction_type is not None:
        raise ValueError(f"scheduler/betas/prediction_type are for diffusers models; a {type(model).__name__} is taken "
                         f"as a k-diffusion denoiser model(x, sigma) -> x̂0 that scales itself")
    low = sigma_min if sigma_min is not None else getattr(model, "sigma_min", None)
    high = sigma_max if sigma_max is not None else getattr(model, "sigma_max", None)
    if low is None or high is None:
        raise ValueError(f"{type(model).__name__} has no sigma_min/sigma_max attributes: pass sigma_min= and "
                         f"sigma_max= (the noise levels it was trained on)")
    low, high = float(low), float(high)
    if not (math.isfinite(low) and high > low >= 0):
        raise ValueError(f"need 0 <= sigma_min < sigma_max, got sigma_min={low}, sigma_max={high}")
    return KDiffusionDenoiser(model, low, high, label_keyword)
