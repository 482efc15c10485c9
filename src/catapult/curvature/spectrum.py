"""The spectrum of the Hessian or the Gauss-Newton matrix: top-k eigenpairs (thick-restart
block Lanczos, :mod:`catapult.curvature.top_k`) here, the trace (Hutch++,
:mod:`~catapult.curvature.trace`) and the spectral density (stochastic Lanczos quadrature,
:mod:`~catapult.curvature.density`) beside it and importable from here, each on the operator of
:mod:`~catapult.curvature.spectral_operator`: optionally pre-conditioned by an Adam-family
optimizer's next step (``P^-1/2 A P^-1/2``) or scaled by SGD's per-group learning rates (``M^1/2 A M^1/2``).

Same calling convention as :func:`catapult.sharpness`; ``curvature="hessian" | "ggn"``.
Nothing here changes a model's parameters, gradients, buffers or train/eval mode, an
optimizer's state, or the global random number generators.
"""
from __future__ import annotations

import torch

from catapult.curvature.certify import certified_pairs
from catapult.curvature.density import (MAX_GRID_POINTS, SIGMA_MAX, SIGMA_MIN, SpectralDensity, check_density_products,
                                        check_sigma, lanczos_quadrature, spectral_density, warn_coarse_grid)
from catapult.curvature.forward_ad import refuse_sparse_products
from catapult.curvature.ggn import CURVATURES, GaussNewtonOperator
from catapult.curvature.preconditioner import check_step_optimizer
from catapult.curvature.rank_agreement import same_call_on_every_rank
from catapult.curvature.sharpness import MEMORY_SETTINGS, memory_setting
from catapult.curvature.spectral_operator import curvature_operator
from catapult.curvature.start import (check_solver_args, initial_vector, outside_autocast, outside_inference_mode,
                                      solver_split)
from catapult.curvature.top_k import Eigenpairs, check_block_size, check_k, lanczos_top_k, restart_floor
from catapult.curvature.trace import check_matvecs, hessian_trace, hutch_plus_plus

__all__ = ["CURVATURES", "GaussNewtonOperator", "Eigenpairs", "SpectralDensity",
           "curvature_operator", "lanczos_top_k", "top_eigenpairs", "check_matvecs", "check_density_products", "hutch_plus_plus",
           "hessian_trace", "lanczos_quadrature", "spectral_density", "check_sigma", "warn_coarse_grid",
           "MAX_GRID_POINTS", "SIGMA_MAX", "SIGMA_MIN"]


@outside_inference_mode
@outside_autocast
@same_call_on_every_rank
def top_eigenpairs(model, loss_fn, batch, k: int = 5, *, tol: float = 1e-3, init=None,
                   max_iter: int = 300, curvature: str = "hessian", optimizer=None, dtype=None,
                   hvp: str = "auto", seed: int = 0, max_basis: int | None = None,
                   chunk_size: int | None = None, memory: str = "fast",
                   distributed: bool = False, scale_by_group_lr: bool = False,
                   block_size: int = 1) -> Eigenpairs:
    """The ``k`` largest eigenpairs of the Hessian (or ``curvature="ggn"``: the Gauss-Newton
    matrix) of ``loss_fn(model(inputs), targets)`` on ``batch``, by :func:`lanczos_top_k`.

    ``block_size=b`` finds every copy of an eigenvalue of multiplicity up to ``b``, for 1.1-1.6x
    the products at ``b`` = 2-3; the default single start vector may see one copy of each (a linear model with
    ``d`` outputs under MSE has every eigenvalue ``d`` times). An eigenvalue that comes back ``b``
    times may repeat more often: a larger block (and ``k``) counts its copies. Eigenvalues closer
    than about ``tol`` times their size are copies too: a linear model with top eigenvalues 1 and
    ``1 - 1e-6`` (then 0.5) gave ``[1.0, 0.5]`` at ``k=2, tol=1e-3`` for 3 of 5 seeds (float64 and
    float32 alike), ``converged=True``; ``block_size=2`` gave both for all of them.

    With an Adam-family ``optimizer`` the operator is ``P^-1/2 A P^-1/2`` (the pre-conditioned
    spectrum, as in :func:`catapult.preconditioned_sharpness`; vectors in those coordinates);
    with SGD and ``scale_by_group_lr`` it is ``M^1/2 A M^1/2``, ``M = diag(lr_i / lr_0)`` (the
    lr-scaled spectrum, as in :func:`catapult.optim.thresholds.lr_scaled_sharpness`).
    ``init``: a flat start vector (e.g. a previous top eigenvector; mixed with a seeded random part
    as :func:`catapult.sharpness`'s); ``distributed``,
    ``memory``, ``chunk_size``, ``dtype``, ``hvp``, ``seed`` as in :func:`catapult.sharpness`
    (on a model sharded by FSDP2 the ``vectors`` are this rank's parts, as its ``est.vector``).
    On finite-difference products each pair's residual is taken with two or three more products
    and the products' own error added (:func:`~catapult.curvature.certify.certified_pairs`).

    ``max_iter`` (products) must be at least ``k``. Returns :class:`Eigenpairs` (``values`` largest first).

    Example (the Hessian ``diag(4, 1)`` of :func:`catapult.sharpness`'s example):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> eig = top_eigenpairs(model, torch.nn.MSELoss(), batch, k=2)
        >>> [round(v, 4) for v in eig.values]
        [4.0, 1.0]
    """
    tol, max_iter, max_basis = check_solver_args(tol, max_iter, max_basis, owner="top_eigenpairs")
    if optimizer is not None:   # before memory="lean"'s sizing forward and the operator's graph
        check_step_optimizer(optimizer, "top_eigenpairs")
    # k and the block first, before the operator's graph is built (k, then the block it bounds)
    trainable = (sum(p.numel() for p in model.parameters() if p.requires_grad)
                 if isinstance(model, torch.nn.Module) else 0)
    k = check_k(k, trainable or None)  # no parameters at all: the operator says so
    if max_iter < k:  # k Ritz pairs need a Krylov space of k vectors, one product each
        raise ValueError(f"max_iter={max_iter} is below k={k}: k eigenpairs need at least k products")
    block_size = check_block_size(block_size, k)
    refuse_sparse_products(hvp if curvature == "hessian" else curvature, batch)   # before lean's probe
    floor = restart_floor(k, block_size, MEMORY_SETTINGS["fast"]["max_basis"]) if memory == "lean" else 0
    chunk_size, basis = memory_setting(memory, batch, chunk_size, max_basis, model, loss_fn, seed, distributed,
                                       basis_floor=floor if max_basis is None else 0)
    op = curvature_operator(model, loss_fn, batch, curvature=curvature, optimizer=optimizer,
                            dtype=dtype, hvp=hvp, seed=seed, chunk_size=chunk_size,
                            distributed=distributed, scale_by_group_lr=scale_by_group_lr,
                            sharded_vectors="local")
    v0 = initial_vector(op, init, seed, distributed, tol=tol)
    if max_basis is None:
        # lean: its sized basis, but room for restarts to pay (its own floor, k + block + 1
        # vectors, restarted after every product: the top 5 of a 2,058-parameter MLP converged in
        # 0 of 5 seeds within 100 products; restart_floor); fast: the same room and more
        basis = max(basis, floor) if memory == "lean" else max(2 * k + 10, basis) + block_size - 1
    split = solver_split(op)
    eig = lanczos_top_k(op, v0, k, tol=tol, max_iter=max_iter, max_basis=basis,
                        block_size=block_size, seed=seed, **split)
    return certified_pairs(op, eig, tol=tol, reduce=split["reduce"])
