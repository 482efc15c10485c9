"""Curvature: top Hessian eigenvalue (sharpness), pre-conditioned sharpness, instability thresholds.

Operators times algorithms: :mod:`~catapult.curvature.hessian` holds the matrix-free Hessian
operator (Hessian-vector products; its finite differences :mod:`~catapult.curvature.difference_products`), :mod:`~catapult.curvature.lanczos` the eigen-solvers (one
operator, or many in lockstep for the batched engine), :mod:`~catapult.curvature.sharpness` the
user-facing measurements built from them (:mod:`~catapult.curvature.preconditioner` the
pre-conditioner of an optimizer's next step, :mod:`~catapult.curvature.instability` its threshold), :mod:`~catapult.curvature.spectrum` top-k eigenpairs,
:mod:`~catapult.curvature.trace` the trace and :mod:`~catapult.curvature.density` the spectral density (on
:mod:`~catapult.curvature.spectral_operator`'s Hessian or Gauss-Newton operator, :mod:`~catapult.curvature.ggn`), :mod:`~catapult.curvature.start`
a solve's start, :mod:`~catapult.curvature.coarse` coarse-to-fine start vectors,
:mod:`~catapult.curvature.distributed` the all-reduced operator for ``distributed=True``,
:mod:`~catapult.curvature.sharded` the one for a model sharded by FSDP2, and
:mod:`~catapult.curvature.certify` the end of a solve on finite-difference products (its
residual taken and the products' own error added to its bound). Everything runs wherever
the model runs (CPU or CUDA). Nothing here changes a model's parameters, gradients, buffers or
train/eval mode, an optimizer's state, or the global random number generators.
"""
from catapult.curvature.hessian import HVP_MODES, HessianOperator
from catapult.curvature.lanczos import EigenEstimate, KrylovBasis, batched_lanczos, lanczos_top_eigenpair
from catapult.curvature.sharpness import (MEMORY_SETTINGS, instability_threshold,
                                          preconditioned_sharpness, sharpness)
from catapult.curvature.spectrum import (Eigenpairs, GaussNewtonOperator, SpectralDensity,
                                         hessian_trace, spectral_density, top_eigenpairs)

__all__ = [
    "EigenEstimate",
    "HessianOperator",
    "KrylovBasis",
    "lanczos_top_eigenpair",
    "batched_lanczos",
    "sharpness",
    "preconditioned_sharpness",
    "instability_threshold",
    "HVP_MODES",
    "MEMORY_SETTINGS",
    "top_eigenpairs",
    "hessian_trace",
    "spectral_density",
    "Eigenpairs",
    "SpectralDensity",
    "GaussNewtonOperator",
]
