"""Weight averaging for any torch module (no Lightning needed): a classic EMA and the power-function
EMA of EDM2 with post-hoc reconstruction of any profile width from stored snapshots."""

from .average import WeightAverage
from .classic import EMA
from .posthoc import posthoc_coefficients, posthoc_reconstruct
from .power_ema import PowerFunctionEMA
from .profiles import MAX_SIGMA_REL, gamma_to_sigma_rel, power_function_beta, sigma_rel_to_gamma
from .snapshots import SnapshotInfo, list_snapshots

__all__ = [
    "EMA",
    "MAX_SIGMA_REL",
    "PowerFunctionEMA",
    "SnapshotInfo",
    "gamma_to_sigma_rel",
    "list_snapshots",
    "posthoc_coefficients",
    "posthoc_reconstruct",
    "power_function_beta",
    "sigma_rel_to_gamma",
    "WeightAverage",
]
