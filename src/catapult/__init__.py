"""catapult: training dynamics at the edge of stability, for PyTorch.

Sharpness tracking, warmup schedules, critical-learning-rate search from a loss catapult,
GI-Adam, and SP / muP / SμPar parameterizations. See the README for a tour.
"""
__version__ = "0.1.0"

#: Each public name and where it is defined; imported at its first use (:mod:`catapult.lazy`), so
#: that a command that only reads files does not import torch.
_EXPORTS = {
    "EigenEstimate": "catapult.curvature.lanczos:EigenEstimate",
    "sharpness": "catapult.curvature.sharpness:sharpness",
    "preconditioned_sharpness": "catapult.curvature.sharpness:preconditioned_sharpness",
    "instability_threshold": "catapult.curvature.sharpness:instability_threshold",
    "top_eigenpairs": "catapult.curvature.spectrum:top_eigenpairs",
    "hessian_trace": "catapult.curvature.spectrum:hessian_trace",
    "spectral_density": "catapult.curvature.spectrum:spectral_density",
    "Eigenpairs": "catapult.curvature.spectrum:Eigenpairs",
    "SpectralDensity": "catapult.curvature.spectrum:SpectralDensity",
    "SharpnessTracker": "catapult.curvature.tracker:SharpnessTracker",
    "SharpnessRecord": "catapult.curvature.tracker:SharpnessRecord",
    "CriticalLR": "catapult.critical_lr:CriticalLR",
    "critical_lr": "catapult.critical_lr:critical_lr",
    "param_groups": "catapult.parametrize:param_groups",
    "parametrize": "catapult.parametrize:parametrize",
    "data": "catapult.data",
    "models": "catapult.models",
    "optim": "catapult.optim",
    "schedules": "catapult.schedules",
}

__all__ = list(_EXPORTS)

from catapult.lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
del lazy_exports
