"""Neural-ODE models: the ODE block, the convolutional NODE classifier (the vanishing-timestep-
embedding paper's), the TA-BN paper's unmixed classifiers and their Aug-NODE / HBNODE / SONODE
variants, their derivative backbones, and a trajectory-regression NODE."""

from .augnode import ZeroAugment
from .backbones import BACKBONES, ConvChain, MLPField, build_backbone, conv_plan
from .conv_classifier import TIME_INJECTIONS, ConvODEClassifier, ConvODEFunc, ResidualBlock
from .conv_units import conv_unit, down_size
from .hbnode import HeavyBallField
from .ode_block import NODE_SOLVER, ODEBlock, ode_blocks, total_nfe
from .sonode import SecondOrderField
from .trajectory import TrajectoryNODE
from .unet_field import UNetField
from .unmixed import VARIANTS, UnmixedClassifier, build_unmixed_classifier
from .velocity import INITIAL_VELOCITIES, WithInitialVelocity

__all__ = [
    "ODEBlock",
    "NODE_SOLVER",
    "ode_blocks",
    "total_nfe",
    "ConvODEClassifier",
    "ConvODEFunc",
    "ResidualBlock",
    "TIME_INJECTIONS",
    "BACKBONES",
    "build_backbone",
    "conv_plan",
    "conv_unit",
    "down_size",
    "ConvChain",
    "UNetField",
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
]
