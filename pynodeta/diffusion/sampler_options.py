"""The options an image sampler takes beyond k-diffusion's common arguments, checked by name.

Every sampler in ``SAMPLERS`` is called as ``sampler(denoiser, x, sigmas, extra_args=…, generator=…,
callback=…, disable=…, **options)``; its options are the rest of its keywords: ``eta`` and ``clip_x0`` for
``ddim``, ``s_churn`` … for ``heun``, ``solver_type`` for ``dpmpp_2m_sde``. A run's config names them in
``evaluation.sampler_options`` and ``pynodeta sample`` in ``--sampler-option NAME=VALUE``; both are checked
here against the sampler's own signature before anything is drawn, so that a misspelt option is an error
naming the sampler's real ones, not a keyword the sampler never sees. Their values are checked by the
sampler itself (``check_option``), the first time it runs; true/false for an option that takes a number
is refused here already, as Python would read it as 1/0.

Every sampler that walks Karras et al.'s noise levels also takes the grid's options, ``sigma_min``,
``sigma_max`` and ``rho`` (EDM Eq. 5; as diffusers' schedulers take their grid in their own config): they
are not the sampler's keywords but set the ``sigmas`` it is given, so the caller takes them out
(:func:`split_grid_options`) and builds the grid with them. ``ddpm`` and ``ddim`` walk a DDPM schedule's
timesteps and take none; ``dpm_adaptive`` uses only the grid's ends and takes no ``rho``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

from .samplers import get_sampler

__all__ = ["GRID_OPTIONS", "sampler_option_names", "check_sampler_options", "split_grid_options"]

# the arguments every sampler shares, set by the caller rather than by a run's options
_COMMON = frozenset({"model", "denoiser", "x", "sigmas", "extra_args", "generator", "callback", "disable"})
_SCALARS = (bool, int, float, str)
ODE_SAMPLER = "ode"  # the probability-flow ODE, solved adaptively: not a fixed-level sampler; its options are its solve
GRID_OPTIONS = ("sigma_min", "sigma_max", "rho")  # the Karras grid's: its last non-zero level, its first, its ρ
_TIMESTEP_SAMPLERS = frozenset({"ddpm", "ddim"})   # they walk a DDPM schedule's timesteps, not a Karras grid


def _grid_option_names(sampler: str) -> tuple[str, ...]:
    if sampler in _TIMESTEP_SAMPLERS or sampler == ODE_SAMPLER:
        return ()
    return ("sigma_min", "sigma_max") if sampler == "dpm_adaptive" else GRID_OPTIONS


def sampler_option_names(sampler: str) -> tuple[str, ...]:
    """The options ``sampler`` takes: its signature's keywords in order, then the grid's (none for ``ode``)."""
    if sampler == ODE_SAMPLER:
        return ()
    own = tuple(name for name in inspect.signature(get_sampler(sampler)).parameters if name not in _COMMON)
    return own + _grid_option_names(sampler)


def split_grid_options(options: Mapping) -> tuple[dict, dict]:
    """``options`` as (the grid's: ``sigma_min``/``sigma_max``/``rho`` that are set, the sampler's own)."""
    grid = {name: value for name, value in options.items() if name in GRID_OPTIONS and value is not None}
    return grid, {name: value for name, value in options.items() if name not in GRID_OPTIONS}


def check_sampler_options(sampler: str, options: Mapping | None, where: str = "sampler_options") -> dict:
    """``options`` as a dict after checking that ``sampler`` takes each of them and that each is a scalar
    (None: no options). ``where`` names the setting in the errors, e.g. ``evaluation.sampler_options``."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{where} must map option names to values, e.g. {{'clip_x0': True}}; got {options!r}")
    allowed = sampler_option_names(sampler)
    for name, value in options.items():
        if name not in allowed:
            if sampler == ODE_SAMPLER:
                raise ValueError(f"{where}: the ode sampler takes no options; set its solve with evaluation.solver "
                                 f"(or --rtol/--atol), got {name!r}")
            if name in GRID_OPTIONS and sampler in _TIMESTEP_SAMPLERS:
                raise ValueError(f"{where}: sampler {sampler!r} walks the DDPM schedule's timesteps (steps sets "
                                 f"them) and takes no {name!r}; the noise-level samplers (euler, heun, dpmpp_2m, "
                                 "…) take sigma_min, sigma_max and rho")
            takes = ", ".join(allowed) if allowed else "none"
            raise ValueError(f"{where}: sampler {sampler!r} takes no option {name!r}; its options: {takes}")
        if value is not None and not isinstance(value, _SCALARS):
            raise TypeError(f"{where}: option {name!r} of sampler {sampler!r} must be a number, a string or "
                            f"true/false, got {value!r}")
        if name in GRID_OPTIONS and value is not None:
            _check_grid_value(name, value, where)
        elif isinstance(value, bool):
            _check_not_a_number(sampler, name, value, where)
    return dict(options)


def _check_not_a_number(sampler: str, name: str, value: bool, where: str) -> None:
    """Refuse true/false for an option that defaults to a number: Python's arithmetic would read it as 1/0."""
    default = inspect.signature(get_sampler(sampler)).parameters[name].default
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        raise TypeError(f"{where}: option {name!r} of sampler {sampler!r} is a number (default {default!r}), "
                        f"got {value!r}; pass a number, e.g. {name}={default!r}")


def _check_grid_value(name: str, value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        meaning = "EDM uses 7" if name == "rho" else "a noise level σ of the model's range"
        raise ValueError(f"{where}: {name} must be a finite number > 0 ({meaning}), got {value!r}")
