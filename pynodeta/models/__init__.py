"""Models of the two families: ``pynodeta.models.node`` (neural ODEs: the ODE block, the
convolutional NODE classifier, the TA-BN paper's unmixed classifiers and their Aug-NODE / HBNODE /
SONODE variants, derivative backbones, a trajectory-regression NODE) and
``pynodeta.models.diffusion`` (diffusion networks: ``DDPMUNet``, ``EDM2UNet``, re-exported here).

``build_model(name, **kwargs)`` builds one by name (see ``MODELS``); ``ode_blocks(model)`` finds the
ODE blocks whose ``last_stats`` carry the NFE of the last solve.
"""

from .common import ACTIVATIONS, NormFactory, make_activation, ode_norm, static_norm
from .diffusion import DDPMUNet, EDM2UNet
from .node import (
    BACKBONES,
    INITIAL_VELOCITIES,
    NODE_SOLVER,
    TIME_INJECTIONS,
    VARIANTS,
    ConvChain,
    ConvODEClassifier,
    ConvODEFunc,
    HeavyBallField,
    MLPField,
    ODEBlock,
    ResidualBlock,
    SecondOrderField,
    TrajectoryNODE,
    UNetField,
    UnmixedClassifier,
    WithInitialVelocity,
    ZeroAugment,
    build_backbone,
    build_unmixed_classifier,
    conv_plan,
    ode_blocks,
    total_nfe,
)
from .registry import MODELS, build_model

__all__ = [
    "ODEBlock",
    "NODE_SOLVER",
    "ode_blocks",
    "total_nfe",
    "MODELS",
    "build_model",
    "ConvODEClassifier",
    "ConvODEFunc",
    "ResidualBlock",
    "TIME_INJECTIONS",
    "BACKBONES",
    "build_backbone",
    "conv_plan",
    "ConvChain",
    "UNetField",
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
    "NormFactory",
]
