"""The top ``k`` eigenpairs of a symmetric operator: thick-restart (block) Lanczos.

A single-vector Krylov space ``span{v, A v, A^2 v, ...}`` holds one direction of each
eigenspace: an eigenvalue of multiplicity ``m`` shows up once, and a top-``k`` solve that
converges before rounding brings the other copies in returns the eigenvalues below it instead,
with small residuals (each returned pair *is* an eigenpair; the list skips some). Hessians
have exact multiplicities more often than one would think: a linear model with ``d`` outputs
under MSE has ``H = I_d (x) X^T X / N``, every eigenvalue ``d`` times (measured,
``k = 6``, 3 outputs, one start vector: ``7.35, 6.36, 5.88, ...`` against the true
``7.35 x 3, 6.36 x 3``, with ``converged=True``).

A block of ``b`` start vectors spans up to ``b`` directions of each eigenspace, so every
eigenvalue of multiplicity ``<= b`` is found with all its copies. Each step multiplies the
``b`` newest basis vectors and orthogonalises the products against the whole basis (full
re-orthogonalisation, a second pass where the DGKS test asks); the coefficients are the columns
of the projected matrix ``M = Q^T A Q``, built column by column, so the relation
``A Q_m = Q_m M_m + Q_next E`` holds by construction through thick restarts (which keep the top
Ritz vectors and the pending block). The Ritz pair ``(theta, Q_m s)`` has residual
``||E s||``, read off ``M`` at no extra product.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from catapult.curvature.krylov import KrylovBasis

__all__ = ["Eigenpairs", "lanczos_top_k"]


@dataclass
class Eigenpairs:
    """Top-k eigenpairs. ``values`` (floats, largest first), ``vectors`` (``(k, n)``, unit rows,
    orthonormal), ``matvecs``, ``converged`` (all ``k``), ``residuals`` (relative eigen-residual
    ``||A v_i - theta_i v_i|| / |theta_i|`` of each pair).

    >>> eig = Eigenpairs([2.0, 1.0], torch.eye(2), matvecs=2, converged=True, residuals=[0.0, 0.0])
    >>> eig.values[0], eig.vectors.shape
    (2.0, torch.Size([2, 2]))
    """

    values: list
    vectors: torch.Tensor
    matvecs: int
    converged: bool
    residuals: list


def lanczos_top_k(matvec, v0: torch.Tensor, k: int, *, tol: float = 1e-3, max_iter: int = 300,
                  max_basis: int | None = None, block_size: int = 1, seed: int = 0) -> Eigenpairs:
    """The ``k`` largest (algebraic) eigenpairs of a symmetric operator by thick-restart
    (block) Lanczos, with every copy of an eigenvalue of multiplicity ``<= block_size``.

    The start block is ``v0`` and ``block_size - 1`` seeded random directions orthogonal to it
    (drawn on the CPU: every device and every rank draws the same ones). Each step multiplies
    the newest block, and ``M[:, i] = Q^T A q_i`` collects the Gram-Schmidt coefficients of each
    product (``M[p, i] = ||w_i||`` for the direction ``q_p = w_i / ||w_i||`` it adds). Products
    at rounding level (an invariant direction: ``k`` above the rank, say) add a fresh seeded
    direction instead, with no coupling. Ritz pairs ``(theta_i, Q_m s_i)`` of the complete
    leading ``m x m`` part of ``M`` (symmetrised) have residuals ``||M[m:, :m] s_i||``. It stops
    when each of the ``k`` largest has residual ``<= tol max(|theta_i|, floor / tol)``,
    ``floor = 100 eps max |theta|`` (what the arithmetic resolves: below it an eigenvalue, a zero
    one of a rank-deficient Hessian say, is judged by its absolute residual, since a relative one
    would never fall under ``tol``; ``residuals`` are relative to the same); or after
    ``max_iter`` products (a block is finished, so up to ``block_size - 1`` more); or when the
    basis spans ``R^n`` (exact). When the basis would pass ``max_basis`` vectors (default
    ``max(2k + 10, 20) + block_size - 1``) it restarts from the top ``max(k + block_size,
    (max_basis - block_size) // 2)`` Ritz vectors plus the pending block, so memory stays at
    ``max_basis`` vectors.

    ``block_size=1`` is single-vector Lanczos, the fastest where no eigenvalue repeats: a block
    of ``b`` costs ~1.5-4x the products (bench/RESULTS.md, issue 16, 4d).

    Example (a double top eigenvalue: one start vector sees one copy):
        >>> A = torch.diag(torch.tensor([5.0, 5.0, 3.0, 1.0, -2.0], dtype=torch.float64))
        >>> v0 = torch.ones(5, dtype=torch.float64)
        >>> [round(x, 6) for x in lanczos_top_k(lambda v: A @ v, v0, 2).values]
        [5.0, 3.0]
        >>> eig = lanczos_top_k(lambda v: A @ v, v0, 2, block_size=2)
        >>> [round(x, 6) for x in eig.values], eig.converged
        ([5.0, 5.0], True)
    """
    n = v0.numel()
    if not (isinstance(k, int) and 1 <= k <= n):
        raise ValueError(f"k must be an integer in [1, {n}], got {k!r}")
    if not (isinstance(block_size, int) and not isinstance(block_size, bool) and block_size >= 1):
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    b = min(block_size, n)
    capacity = min(n, max_basis if max_basis is not None else max(2 * k + 10, 20) + b - 1)
    if capacity < min(n, k + 2 * b):
        raise ValueError(f"max_basis must be >= k + 2 block_size = {k + 2 * b}, got {max_basis!r}")
    keep = min(capacity - b, max(k + b, (capacity - b) // 2))
    eps = torch.finfo(v0.dtype).eps
    basis = KrylovBasis(v0, capacity=capacity)
    basis.append(v0 / torch.linalg.vector_norm(v0))
    fresh = 0
    while basis.size < b:
        basis.append(basis.fresh_direction(seed * 7919 + fresh))
        fresh += 1
    M = np.zeros((capacity, capacity))
    done, matvecs, scale = 0, 0, 0.0
    values = vectors = None
    converged, residuals = False, [math.inf] * k
    while True:
        block = range(done, basis.size)
        products = []
        for i in block:
            w = matvec(basis.row(i)).to(v0.dtype).clone()
            matvecs += 1
            scale = max(scale, float(torch.linalg.vector_norm(w)))
            products.append(w)
        if not all(bool(w.isfinite().all()) for w in products):
            values = None
            break
        for i, w in zip(block, products):  # each product against the basis, which grows
            h = basis.orthogonalize(w).double().cpu().numpy()
            M[:basis.size, i] += h
            norm = float(torch.linalg.vector_norm(w))
            if basis.size < n and basis.size < capacity:
                if norm <= 10 * eps * max(scale, eps) * math.sqrt(n):  # invariant direction
                    basis.append(basis.fresh_direction(seed * 7919 + fresh))
                    fresh += 1
                else:
                    M[basis.size, i] = norm
                    basis.append(w.div_(norm))
        done = block.stop
        size = basis.size
        M_m = (M[:done, :done] + M[:done, :done].T) / 2
        values, vectors = np.linalg.eigh(M_m)
        E = M[done:size, :done]
        order = np.argsort(values)[::-1]
        top = order[:min(k, done)]
        smallest = max(100 * eps * float(np.max(np.abs(values))) / tol, 1e-300)
        residuals = [float(np.linalg.norm(E @ vectors[:, i])) / max(abs(values[i]), smallest)
                     for i in top]
        if done >= k and max(residuals) <= tol:
            converged = True
            break
        if done == n or size == done:  # the basis spans R^n (or nothing is left to add)
            converged = done >= k
            break
        if matvecs >= max_iter:
            break
        if capacity < n and size + (size - done) > capacity:
            # thick restart: the top Ritz vectors (done - 1 >= k of them at most) + pending block
            pending, kept = size - done, min(keep, done - 1)
            S = vectors[:, order[:kept]]
            C = np.zeros((size, kept + pending))
            C[:done, :kept] = S
            C[done:, kept:] = np.eye(pending)
            basis.restart(torch.as_tensor(C, dtype=v0.dtype, device=v0.device))
            M = np.zeros_like(M)
            M[:kept, :kept] = np.diag(values[order[:kept]])
            M[kept:kept + pending, :kept] = E @ S
            done = kept
    if values is None:
        return Eigenpairs([float("nan")] * k, v0.new_full((k, n), float("nan")), matvecs, False,
                          [float("nan")] * k)
    order = np.argsort(values)[::-1][:k]
    S = np.zeros((basis.size, len(order)))
    S[:done] = vectors[:, order]
    V = basis.combine(torch.as_tensor(S, dtype=v0.dtype, device=v0.device))
    V = V / torch.linalg.vector_norm(V, dim=1, keepdim=True)
    return Eigenpairs([float(values[i]) for i in order], V, matvecs, converged,
                      [float(r) for r in residuals])
