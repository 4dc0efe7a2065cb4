"""Neural-ODE models: the ODE block, the seed-001 NODE classifier, the TA-BN paper's unmixed
classifiers and their Aug-NODE / HBNODE / SONODE variants, and a trajectory-regression NODE.
Diffusion networks live in ``pynodeta.models.diffusion`` (``DDPMUNet`` and ``EDM2UNet`` are re-exported here).

``build_model(name, **kwargs)`` builds one by name (see ``MODELS``); ``ode_blocks(model)`` finds the
ODE blocks whose ``last_stats`` carry the NFE of the last solve.
"""

from .augnode import ZeroAugment
from .backbones import BACKBONES, ConvChain, MLPField, build_backbone, conv_plan
from .common import ACTIVATIONS, group_count, make_activation, ode_norm, static_norm
from .diffusion import DDPMUNet, EDM2UNet
from .hbnode import HeavyBallField
from .ode_block import ODEBlock, ODESettings, ode_blocks, total_nfe
from .registry import MODELS, build_model
from .seed001 import TIME_INJECTIONS, ResidualBlock, Seed001Classifier, Seed001ODEFunc
from .sonode import SecondOrderField
from .trajectory import TrajectoryNODE
from .unet import UNet18
from .unmixed import VARIANTS, UnmixedClassifier, build_unmixed_classifier
from .velocity import INITIAL_VELOCITIES, WithInitialVelocity

__all__ = [
    "ODEBlock",
    "ODESettings",
    "ode_blocks",
    "total_nfe",
    "MODELS",
    "build_model",
    "Seed001Classifier",
    "Seed001ODEFunc",
    "ResidualBlock",
    "TIME_INJECTIONS",
    "BACKBONES",
    "build_backbone",
    "conv_plan",
    "ConvChain",
    "UNet18",
    "DDPMUNet",
    "EDM2UNet",
    "MLPField",
    "VARIANTS",
    "UnmixedClassifier",
    "build_unmixed_classifier",
    "ZeroAugment",
    "HeavyBallField",
    "SecondOrderField",
    "WithInitialVelocity",
    "INITIAL_VELOCITIES",
    "TrajectoryNODE",
    "ACTIVATIONS",
    "make_activation",
    "ode_norm",
    "static_norm",
    "group_count",
]
