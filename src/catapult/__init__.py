"""catapult: training dynamics at the edge of stability, for PyTorch.

Sharpness tracking, warmup schedules, critical-learning-rate search from a loss catapult,
GI-Adam, and SP / muP / SμPar parameterizations. See the README for a tour.
"""
from catapult.curvature import (
    EigenEstimate,
    Eigenpairs,
    SpectralDensity,
    hessian_trace,
    instability_threshold,
    preconditioned_sharpness,
    sharpness,
    spectral_density,
    top_eigenpairs,
)
from catapult.critical_lr import CriticalLR, critical_lr
from catapult.parametrize import param_groups, parametrize
from catapult import data, models, optim, schedules

__version__ = "0.1.0"

__all__ = [
    "EigenEstimate",
    "sharpness",
    "preconditioned_sharpness",
    "instability_threshold",
    "top_eigenpairs",
    "hessian_trace",
    "spectral_density",
    "Eigenpairs",
    "SpectralDensity",
    "CriticalLR",
    "critical_lr",
    "param_groups",
    "parametrize",
    "data",
    "models",
    "optim",
    "schedules",
]
