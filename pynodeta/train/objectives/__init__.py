"""Diffusion objectives: what ``DiffusionModule`` trains its network for (see ``base.DiffusionObjective``)."""

from .base import DiffusionObjective
from .ddpm import DDPMObjective
from .edm import EDMObjective
from .edm2 import EDM2Objective

__all__ = ["DiffusionObjective", "DDPMObjective", "EDMObjective", "EDM2Objective"]
