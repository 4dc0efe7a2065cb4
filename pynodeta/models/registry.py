"""Models by name, for configs and the command line."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from .node import ConvODEClassifier, TrajectoryNODE, build_unmixed_classifier

__all__ = ["MODELS", "build_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed001": ConvODEClassifier,  # the vanishing-timestep-embedding paper's classifier
    "unmixed": build_unmixed_classifier,
    "augnode": functools.partial(build_unmixed_classifier, variant="augnode"),
    "hbnode": functools.partial(build_unmixed_classifier, variant="hbnode"),
    "sonode": functools.partial(build_unmixed_classifier, variant="sonode"),
    "trajectory": TrajectoryNODE,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """``MODELS[name](**kwargs)``; e.g. ``build_model("unmixed", backbone="conv6", in_shape=(3, 32, 32),
    num_classes=10, norm="tabn")``. The variants fix ``variant=``; pass the rest as for "unmixed"."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    if name in ("augnode", "hbnode", "sonode") and "variant" in kwargs:
        raise ValueError(f"model {name!r} fixes variant={name!r}; drop the variant argument")
    return MODELS[name](**kwargs)
