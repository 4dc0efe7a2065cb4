"""The options an image sampler takes beyond k-diffusion's common arguments, checked by name.

Every sampler in ``SAMPLERS`` is called as ``sampler(denoiser, x, sigmas, extra_args=…, generator=…,
callback=…, disable=…, **options)``; its options are the rest of its keywords: ``eta`` and ``clip_x0`` for
``ddim``, ``s_churn`` … for ``heun``, ``solver_type`` for ``dpmpp_2m_sde``. A run's config names them in
``evaluation.sampler_options`` and ``pynodeta sample`` in ``--sampler-option NAME=VALUE``; both are checked
here against the sampler's own signature before anything is drawn, so that a misspelt option is an error
naming the sampler's real ones, not a keyword the sampler never sees. Their values are checked by the
sampler itself (``check_option``), the first time it runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from .samplers import get_sampler

__all__ = ["sampler_option_names", "check_sampler_options"]

# the arguments every sampler shares, set by the caller rather than by a run's options
_COMMON = frozenset({"model", "denoiser", "x", "sigmas", "extra_args", "generator", "callback", "disable"})
_SCALARS = (bool, int, float, str)
ODE_SAMPLER = "ode"  # the probability-flow ODE, solved adaptively: not a fixed-level sampler; its options are its solve


def sampler_option_names(sampler: str) -> tuple[str, ...]:
    """The options ``sampler`` takes, in its signature's order (empty for ``dpmpp_2m`` and ``ode``)."""
    if sampler == ODE_SAMPLER:
        return ()
    return tuple(name for name in inspect.signature(get_sampler(sampler)).parameters if name not in _COMMON)


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
            takes = ", ".join(allowed) if allowed else "none"
            raise ValueError(f"{where}: sampler {sampler!r} takes no option {name!r}; its options: {takes}")
        if value is not None and not isinstance(value, _SCALARS):
            raise TypeError(f"{where}: option {name!r} of sampler {sampler!r} must be a number, a string or "
                            f"true/false, got {value!r}")
    return dict(options)
