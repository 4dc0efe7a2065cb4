"""pynodeta: time-dependent neural networks (neural ODEs, diffusion models) that keep their sense of time.

The ODE core is re-exported here (``pn.solve``, ``pn.odeint``, ``pn.odeint_adjoint``); the other
subpackages (``pn.nn``, ``pn.models``, ``pn.data``, ``pn.diagnose``, ``pn.train``,
``pn.diffusion``, ``pn.metrics``, ``pn.ema``) load on first use.
"""

from __future__ import annotations

import importlib

from .ode import *  # noqa: F403
from .ode import __all__ as _ode_all

__version__ = "0.1.0"

_SUBPACKAGES = ("ode", "nn", "models", "data", "diagnose", "train", "diffusion", "metrics", "ema")

__all__ = [*_ode_all, *_SUBPACKAGES, "__version__"]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
