"""The end of a solve on finite-difference products: its answer measured against the Hessian.

Lanczos reads a Ritz pair's residual off its recurrence, ``||A y - theta y|| = |beta_m s_m|``,
which holds when every product is ``A`` times its vector. Difference products
(``hvp="finite_difference"``, and every product of a model sharded by FSDP2) are not: each
carries its own error, rounding ``~ eps ||g|| / h`` and truncation ``~ h^2``, different for each
vector, so the recurrence describes an operator that no product applies. On a one-block GELU GPT
in float32 (1,040 parameters, exact dense Hessian) from a random start it claimed residuals of
3.6e-4 .. 7.2e-4 at ``tol=1e-3`` where the eigenvalue was 1e-3 .. 2e-3 off, and at ``tol=1e-5``
2.7e-6 .. 7.8e-6 where the error was 6 to 500 times that (``bench/RESULTS.md``, issue 16, 5e).
So a solve on differences ends with two products of its own unit vector ``y``, beside its Ritz
value ``theta``::

    r = ||D_h y - theta y|| / |theta|          (the residual, taken)
    e = ||D_2h y - D_h y|| / |theta|           (the products' own error along y)

and reports ``residual = r``, ``error_bound = r + e`` and ``converged = r + e <= tol``, with
``value = theta`` kept. Why ``r + e`` bounds the eigenvalue's error: ``||H y - theta y|| <=
||D_h y - theta y|| + ||(D_h - H) y||``, and some eigenvalue of the symmetric ``H`` lies within
that of ``theta`` (Bauer-Fike). The last term is estimated, not bounded: ``D_2h - D_h`` is three
times ``D_h``'s truncation error (which grows as ``h^2``) and about its rounding error (which
shrinks as ``1 / h``). ``theta`` is kept rather than ``y^T D_h y``: along a pre-conditioned
top eigenvector the product's truncation error is large (2e-3 in float32 on that GPT after 3
Adam steps, exactly ``~ h^2``) while the Ritz value, built from products of the Krylov vectors,
was 1e-5 off (its Krylov vectors are not aligned with ``y``, and the truncation error is cubic in
the direction). Where ``r + e > tol > e``, the solve is taken again from ``y``, with what is left
of ``max_iter`` and a tolerance of ``(tol - e) / 2``, at most :data:`RESTARTS` times; each round
ends with the two products. A solve from ``y`` takes its first product along ``y``, so its Ritz
value carries up to that product's error: within the bound, but it can be less accurate than the
first (on that GPT at ``tol=1e-2``: 1.6e-3 off, bound 7.5e-3; without the restart 3.3e-5 off,
but with a bound of 1.2e-2). On the one-block GPT's plain Hessian the restarts are what reach
``tol=1e-3`` in float32 (6 seeds of 6, 6-16 products, against 1 of 6 without them). All these
products are counted in ``matvecs``, beyond ``max_iter`` by two at most. A step ``2 h`` that the
kink check refuses at every retry leaves ``e`` infinite.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from catapult.curvature.difference import difference_operator, scaled_step
from catapult.curvature.krylov import vector_norm
from catapult.curvature.lanczos import EigenEstimate
from catapult.curvature.top_k import Eigenpairs

__all__ = ["RESTARTS", "CHECK_STEP_FACTOR", "certified", "certified_pairs", "measured"]

#: Solves taken again from the last vector when its bound ``r + e``, taken, is above ``tol``.
RESTARTS = 2
#: The second step of the error estimate, a multiple of the first.
CHECK_STEP_FACTOR = 2.0


def certified(matvec, est: EigenEstimate, *, tol: float, max_iter: int,
              solve: Callable[[torch.Tensor, int, float], EigenEstimate], reduce=None) -> EigenEstimate:
    """``est`` as it stands against the Hessian where ``matvec``'s products are differences (the
    module docstring), else ``est`` itself. ``solve(v0, budget, tol)`` runs the solve again from
    ``v0`` (a copy it may write into) with at most ``budget`` products to its own ``tol``;
    ``reduce`` sums over the ranks for vectors split across them
    (:func:`~catapult.curvature.start.solver_split`).

    Example: a "difference operator" whose products carry an error ``E`` that is not symmetric,
    as rounding is not. The recurrence's residual (0 here: the Krylov space is invariant under
    ``A + E``) says nothing of ``E``; the residual taken does:

    >>> A = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    >>> E = torch.tensor([[0.0, 0.0], [0.02, 0.0]], dtype=torch.float64)
    >>> class Noisy:
    ...     mode, step_factor = "finite_difference", 1.0
    ...     def __call__(self, v):
    ...         return A @ v + self.step_factor * (E @ v)
    >>> op = Noisy()
    >>> est = EigenEstimate(4.0, torch.tensor([1.0, 0.0], dtype=torch.float64), 2, True, 0.0, 0.0)
    >>> out = certified(op, est, tol=1e-3, max_iter=3, solve=None)   # no products left to solve again
    >>> out.value, out.residual, out.error_bound, out.converged, out.matvecs
    (4.0, 0.005, 0.01, False, 4)
    """
    fd = difference_operator(matvec)
    if fd is None or not math.isfinite(est.value):
        return est
    used, restarts = est.matvecs, 0
    while True:
        y, theta = est.vector / vector_norm(est.vector, reduce), est.value
        residual, error = measured(matvec, fd, y, theta, reduce)
        used += 2
        if not math.isfinite(residual):   # a non-finite product (norms are the ranks' sums: all agree)
            return EigenEstimate(math.nan, y, used, False, math.nan, math.nan, est.coarse_matvecs, est.coarse_cost)
        bound = residual + error
        if bound <= tol or not error < tol or restarts == RESTARTS or used >= max_iter:
            return EigenEstimate(theta, y, used, bool(bound <= tol), residual, bound, est.coarse_matvecs,
                                 est.coarse_cost)
        # half of what e leaves of tol: the solve's own test is the recurrence's, not the residual
        est = solve(y.clone(), max_iter - used, (tol - error) / 2)
        used += est.matvecs
        restarts += 1
        if not math.isfinite(est.value):
            return EigenEstimate(math.nan, y, used, False, math.nan, math.nan, est.coarse_matvecs, est.coarse_cost)


def measured(matvec, fd, y: torch.Tensor, theta: float, reduce=None) -> tuple[float, float]:
    """``(r, e)`` of the module docstring for the unit vector ``y`` and the value ``theta``, from
    two products of ``matvec``, at the step of ``fd`` (the difference operator behind it) and at
    :data:`CHECK_STEP_FACTOR` times it; ``e`` is infinite where the kink check refuses every
    retry of the second. Both are relative to ``|theta|`` (:func:`_relative`).

    >>> class Differences:
    ...     mode, step_factor = "finite_difference", 1.0
    ...     def __call__(self, v):   # 2 I, off by 1e-3 step_factor^2 along the other coordinate
    ...         return 2.0 * v + 1e-3 * self.step_factor ** 2 * v.flip(0)
    >>> op = Differences()
    >>> [round(x, 6) for x in measured(op, op, torch.tensor([1.0, 0.0], dtype=torch.float64), 2.0)]
    [0.0005, 0.0015]
    """
    product = matvec(y)
    with scaled_step(fd, CHECK_STEP_FACTOR):
        try:
            coarser = matvec(y)
        except ValueError:   # the kink check refused every retry from 2 h
            coarser = None
    residual = _relative(float(vector_norm(product - theta * y, reduce)), theta)
    error = math.inf if coarser is None else _relative(float(vector_norm(coarser - product, reduce)), theta)
    return residual, error


def _relative(size: float, theta: float) -> float:
    """``size / |theta|``; for ``theta = 0``, 0 when ``size`` is 0 and infinite otherwise (nan stays nan)."""
    if theta:
        return size / abs(theta)
    return size if size == 0 or math.isnan(size) else math.inf


def certified_pairs(matvec, eig: Eigenpairs, *, tol: float, reduce=None) -> Eigenpairs:
    """``eig`` (top-k pairs) as they stand against the Hessian where ``matvec``'s products are
    differences, else ``eig`` itself: each pair's ``residuals[i]`` becomes ``r_i + e_i`` of the
    module docstring (two products per pair, counted in ``matvecs``; no second solve), and
    ``converged`` says whether every one is within ``tol``.

    >>> class Differences:
    ...     mode, step_factor = "finite_difference", 1.0
    ...     def __call__(self, v):   # diag(4, 1) with an error that grows as the step squared
    ...         return torch.tensor([4.0, 1.0], dtype=torch.float64) * v + 1e-3 * self.step_factor ** 2 * v.flip(0)
    >>> eig = Eigenpairs([4.0, 1.0], torch.eye(2, dtype=torch.float64), 5, True, [0.0, 0.0])
    >>> out = certified_pairs(Differences(), eig, tol=1e-2)
    >>> [round(r, 6) for r in out.residuals], out.converged, out.matvecs
    ([0.001, 0.004], True, 9)
    """
    fd = difference_operator(matvec)
    if fd is None or not all(math.isfinite(v) for v in eig.values):
        return eig
    bounds = []
    for theta, y in zip(eig.values, eig.vectors):
        bounds.append(sum(measured(matvec, fd, y, theta, reduce)))
    converged = all(b <= tol for b in bounds)   # False for a nan bound
    return Eigenpairs(list(eig.values), eig.vectors, eig.matvecs + 2 * len(bounds), converged, bounds)
