"""Coarse-to-fine start vectors: the top eigenvector of the Hessian on nested sub-batches.

A cold Lanczos solve spends most of its products turning a random vector into one that lives in
the Hessian's top (outlier) eigenspace. On a large batch that work can be done on sub-batches:
the Hessian of the loss on the first ``n/16`` samples already has nearly the same outlier
eigenspace as on all ``n`` (its bulk differs, its outliers move by ``O(1/sqrt(m))``), and its
products cost ``~1/16`` as much when per-sample compute dominates. The vector found there starts
the solve on ``n/4`` samples, whose vector starts the full-batch solve. The final answer and its
stopping test (``tol``) are those of the full-batch solve only: a coarse level changes where
Lanczos starts, never what it certifies.

Nothing here changes a model's parameters, gradients, buffers or train/eval mode, or the global
random number generators.
"""
from __future__ import annotations

import torch

from catapult.curvature.hessian import HessianOperator
from catapult.curvature.lanczos import lanczos_top_eigenpair

__all__ = ["COARSE_MIN_SAMPLES", "COARSE_LEVELS", "coarse_levels", "coarse_start_vector"]

#: Batches with fewer samples (dim 0) get no coarse levels under ``coarse="auto"``: products on
#: a few samples cost nearly as much as on the whole batch there (per-call overhead dominates),
#: so the coarse solve costs more than it saves (the small GPT of ``bench/bench_peers.py``).
COARSE_MIN_SAMPLES = 256
#: ``(divisor, tol)`` of each coarse level, coarsest first: the sub-batch is the first
#: ``n // divisor`` samples. Measured on the Fig. 1 FCN at n = 1000 (bench/RESULTS.md, issue 16).
COARSE_LEVELS = ((16, 3e-3), (4, 3e-3))


def coarse_levels(batch, coarse) -> list[tuple[int, float]]:
    """The ``(samples, tol)`` of the coarse solves for ``batch`` under ``coarse``.

    ``coarse`` is ``None`` (none), ``"auto"`` (:data:`COARSE_LEVELS` when the batch's inputs and
    targets are tensors sharing a sample dimension of at least :data:`COARSE_MIN_SAMPLES`, else
    none) or a sequence of ``(divisor, tol)`` pairs.

    >>> x, y = torch.zeros(1000, 3), torch.zeros(1000)
    >>> coarse_levels((x, y), "auto"), coarse_levels((x[:100], y[:100]), "auto")
    ([(62, 0.003), (250, 0.003)], [])
    """
    if coarse is None:
        return []
    inputs, targets = batch
    if not (torch.is_tensor(inputs) and torch.is_tensor(targets) and inputs.dim() >= 1
            and targets.dim() >= 1 and inputs.shape[0] == targets.shape[0]):
        if coarse == "auto":
            return []
        raise ValueError("coarse levels need the batch's inputs and targets to be tensors with a "
                         "common sample dimension (dim 0)")
    n = inputs.shape[0]
    if coarse == "auto":
        if n < COARSE_MIN_SAMPLES:
            return []
        coarse = COARSE_LEVELS
    levels = []
    for divisor, tol in coarse:
        if not (isinstance(divisor, int) and divisor >= 2 and tol > 0):
            raise ValueError(f"coarse levels must be (divisor >= 2, tol > 0) pairs, got "
                             f"{(divisor, tol)!r}")
        levels.append((max(1, n // divisor), float(tol)))
    return levels


def coarse_start_vector(model, loss_fn, batch, v0: torch.Tensor, levels, *, dtype=None,
                        hvp: str = "auto", seed: int = 0, max_basis: int = 20,
                        max_iter: int = 100, operator_options: dict | None = None,
                        solve=None) -> tuple[torch.Tensor, int, float]:
    """``(vector, products, cost)``: ``v0`` carried through the top-eigenvector solves on the
    first ``m`` samples of each level (``levels`` from :func:`coarse_levels`), coarsest first.

    ``products`` counts the sub-batch Hessian-vector products; ``cost`` weighs each by its
    level's ``m / n`` (full-batch-equivalent products when per-sample compute dominates).
    ``operator_options`` are further :class:`HessianOperator` arguments (``memory="lean"``:
    its micro-batches, no retained graph); ``solve(op, v, tol=, max_iter=)`` replaces the solver
    (``memory="lean"``: :func:`catapult.curvature.lean.lean_top_eigenpair`).

    Example (one level on the first 2 of 4 samples, which already hold the top direction):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
        >>> v, products, cost = coarse_start_vector(model, torch.nn.MSELoss(), (x, torch.zeros(4, 1)),
        ...                                         torch.ones(2), [(2, 1e-6)])
        >>> v.abs().round(decimals=4), products, cost
        (tensor([1., 0.]), 2, 1.0)
    """
    inputs, targets = batch
    n = inputs.shape[0]
    vector, products, cost = v0, 0, 0.0
    for m, tol in levels:
        op = HessianOperator(model, loss_fn, (inputs[:m], targets[:m]), dtype=dtype, hvp=hvp,
                             seed=seed, **(operator_options or {}))
        if solve is not None:
            est = solve(op, vector, tol=tol, max_iter=max_iter)
        else:
            est = lanczos_top_eigenpair(op, vector, tol=tol, max_iter=max_iter,
                                        max_basis=max_basis, _fresh_output=True)
        products += est.matvecs
        cost += est.matvecs * m / n
        if est.vector.isfinite().all() and est.converged:
            vector = est.vector
    return vector, products, cost
