"""Lanczos for the top eigenpair of a symmetric operator given by matrix-vector products:
one operator (:func:`lanczos_top_eigenpair`) or ``m`` operators in lockstep
(:func:`batched_lanczos`, the batched engine's solver).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from catapult.arguments import MAX_PRODUCTS, check_integer, check_real
from catapult.curvature.krylov import (KrylovBasis, inner_product, product_exponent, rows_inner_products, scaled_back,
                                       scaled_norm, vector_norm, unit_roundoff)
from catapult.curvature.stopping import (ERROR_FLOOR_ULPS, eigenvalue_error_bound, error_floor, krylov_invariant,
                                         relative_residual, reported_bound, rounding_level, stop_test)

__all__ = [
    "EigenEstimate", "KrylovBasis", "lanczos_top_eigenpair", "batched_lanczos",
    # the Lanczos step and its pieces (KrylovBasis from catapult.curvature.krylov; the stopping test
    # and the error bounds from catapult.curvature.stopping)
    "lanczos_step", "restart_sizes", "tridiagonal_update", "ritz_pairs", "top_ritz_pair", "tridiagonal_top_pair",
    "relative_residual",
    "rounding_level", "krylov_invariant", "eigenvalue_error_bound", "stop_test", "thick_restart",
    "ERROR_FLOOR_ULPS", "error_floor", "reported_bound",
]


@dataclass
class EigenEstimate:
    """An estimate of the top eigenpair of a symmetric operator.

    Attributes:
        value: the eigenvalue estimate ``theta`` (largest algebraic Ritz value).
        vector: unit-norm flat eigenvector estimate ``v`` (over all trainable parameters, in
            ``model.parameters()`` order); pass it as ``init=`` to warm-start the next solve.
        matvecs: operator applications (Hessian-vector products) spent.
        converged: whether ``error_bound <= tol`` was reached within ``max_iter`` matvecs
            (or the Krylov space became invariant).
        residual: relative eigen-residual ``||A v - theta v|| / |theta|`` (from the Lanczos
            recurrence), ``nan`` if the operator produced non-finite numbers.
        error_bound: relative bound on the eigenvalue's error: some eigenvalue ``lambda``
            of the operator has ``|lambda - value| <= error_bound * |value|`` (the relative
            residual, Bauer-Fike/Krylov-Weinberg; it bounds the error against ``lambda_max``
            once the solver has found the top eigenvalue), never below the rounding the dtype
            leaves (:func:`error_floor`: a ``tol`` under it gives ``converged=False``, and so
            does a top eigenvalue within rounding of 0); what ``tol`` is compared with. After
            a solve on finite-difference products (``sharpness``,
            ``preconditioned_sharpness``), the residual taken plus the products' estimated
            error (not below that floor either), so ``lambda`` is the Hessian's
            (:mod:`~catapult.curvature.certify`).
        coarse_matvecs: products on sub-batches or by finite differences spent on the start
            vector (:mod:`catapult.curvature.coarse`), not counted in ``matvecs``;
            ``coarse_cost`` weighs each by its sub-batch's share of the samples, or 1/2 for a
            difference product (full-batch-equivalent products).

    Example:
        >>> est = EigenEstimate(value=4.0, vector=torch.tensor([1.0, 0.0]), matvecs=2,
        ...                     converged=True)
        >>> est.value, est.converged, est.residual
        (4.0, True, nan)
    """

    value: float
    vector: torch.Tensor
    matvecs: int
    converged: bool
    residual: float = float("nan")
    error_bound: float = float("nan")
    coarse_matvecs: int = 0
    coarse_cost: float = 0.0


# --------------------------------------------------------------------------------------------
# Lanczos steps shared by the single and the batched solver
# --------------------------------------------------------------------------------------------
# Both solvers keep the projected matrix T = Q^T A Q on the host (numpy float64, at most
# max_basis x max_basis per operator) and call these functions on it, so the two iterations are
# the same arithmetic; only the basis updates on the device differ (one operator vs. a batch).


def restart_sizes(max_basis: int, n: int) -> tuple[int, int]:
    """Basis capacity and the number of Ritz vectors a thick restart keeps.

    ``capacity = min(max_basis, n)`` (a Krylov space of ``R^n`` has at most ``n`` vectors) and
    ``keep = max(1, capacity // 2)``.

    >>> restart_sizes(20, 1000), restart_sizes(20, 6)
    ((20, 10), (6, 3))
    """
    capacity = min(int(max_basis), n)
    return capacity, max(1, capacity // 2)


def tridiagonal_update(T: np.ndarray, j: int, alpha, beta) -> np.ndarray:
    """The projected matrix after Lanczos step ``j``, as a new array (``T`` is not modified).

    Step ``j`` gives ``A q_j = sum_{i<j} T_ij q_i + alpha_j q_j + beta_j q_{j+1}``, so
    ``T'[j, j] = alpha_j`` and, when ``j + 1 < T.shape[-1]`` (room for ``q_{j+1}``),
    ``T'[j, j+1] = T'[j+1, j] = beta_j``. Leading dimensions of ``T`` are a batch of operators,
    with ``alpha`` and ``beta`` broadcast over them (one value per operator).

    >>> import numpy as np
    >>> T = tridiagonal_update(np.zeros((3, 3)), 0, 2.0, 0.5)
    >>> T.tolist()
    [[2.0, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    T = np.array(T, dtype=np.float64)
    T[..., j, j] = alpha
    if j + 1 < T.shape[-1]:
        T[..., j + 1, j] = beta
        T[..., j, j + 1] = beta
    return T


def ritz_pairs(T: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values (ascending) and unit eigenvectors (columns) of the leading ``size x size``
    block ``T_m`` of the projected matrix: ``T_m S = S diag(theta)``, ``S^T S = I``
    (``numpy.linalg.eigh``; leading dimensions of ``T`` are a batch).

    >>> import numpy as np
    >>> values, vectors = ritz_pairs(np.array([[2.0, 1.0], [1.0, 2.0]]), 2)
    >>> values.round(6).tolist()
    [1.0, 3.0]
    """
    return np.linalg.eigh(T[..., :size, :size])


def top_ritz_pair(ritz_values: np.ndarray, ritz_vectors: np.ndarray) -> tuple[float, np.ndarray]:
    """The largest algebraic Ritz pair ``(theta, s)`` of one operator's :func:`ritz_pairs`.

    >>> import numpy as np
    >>> theta, s = top_ritz_pair(*ritz_pairs(np.diag([1.0, 5.0, 3.0]), 3))
    >>> float(theta), np.abs(s).tolist()
    (5.0, [0.0, 1.0, 0.0])
    """
    return float(ritz_values[-1]), ritz_vectors[:, -1]


def tridiagonal_top_pair(alphas: Sequence[float], betas: Sequence[float]) -> tuple[float, np.ndarray, float]:
    """``(theta, s, lowest)`` of the symmetric tridiagonal ``T_m`` with diagonal ``alphas`` (``m``)
    and off-diagonal ``betas`` (``m - 1``): its largest eigenvalue ``theta``, that eigenvalue's unit
    eigenvector ``s`` (sign: its entry of largest magnitude is positive) and its smallest eigenvalue ``lowest``.

    Bisection and inverse iteration on ``T_m`` itself (LAPACK ``stebz`` / ``stein`` through
    ``scipy.linalg.eigh_tridiagonal``): ``O(m)`` work for the two values and the vector, where
    :func:`ritz_pairs`' dense ``eigh`` of the ``m x m`` matrix is ``O(m^3)`` (a solver that asks at
    every step pays ``O(m^4)`` in all). Equal to ``numpy.linalg.eigh`` of the dense ``T_m`` to
    float64 rounding (``tests/test_tridiagonal_top_pair.py``).

    >>> theta, s, lowest = tridiagonal_top_pair([2.0, 2.0], [1.0])
    >>> round(theta, 12), s.round(6).tolist(), round(lowest, 12)
    (3.0, [0.707107, 0.707107], 1.0)
    """
    d = np.asarray(alphas, dtype=np.float64)
    e = np.asarray(betas, dtype=np.float64)
    m = d.shape[0]
    if d.ndim != 1 or m == 0 or e.shape != (m - 1,):
        raise ValueError(f"tridiagonal_top_pair needs m >= 1 diagonal and m - 1 off-diagonal entries, "
                         f"got {d.shape} and {e.shape}")
    if m == 1:
        return float(d[0]), np.ones(1), float(d[0])
    from scipy.linalg import eigh_tridiagonal, eigvalsh_tridiagonal  # scikit-learn's dependency; ~0.1 s to import

    # stebz works with the squares of the off-diagonal: beyond ~1e154 it did not converge (a
    # LinAlgError) or gave nan vectors, below ~1e-154 a wrong pair (2.0 for 2.65e-155 / 1e-155),
    # where the dense eigh is right. Scaled to ~1 by a power of 2 (exact) and back.
    scale = float(max(np.abs(d).max(), np.abs(e).max(initial=0.0)))
    exponent = int(np.frexp(scale)[1]) if scale > 0 and math.isfinite(scale) else 0
    d, e = np.ldexp(d, -exponent), np.ldexp(e, -exponent)
    top, vectors = eigh_tridiagonal(d, e, select="i", select_range=(m - 1, m - 1), check_finite=False)
    lowest = eigvalsh_tridiagonal(d, e, select="i", select_range=(0, 0), check_finite=False)
    s = vectors[:, 0]
    if s[np.argmax(np.abs(s))] < 0:  # not s_0's sign: s_0 can be 1e-49, its sign noise
        s = -s
    with np.errstate(over="ignore"):   # (a top past 1.8e308 is inf, as the dense eigh's)
        return float(np.ldexp(top[0], exponent)), s, float(np.ldexp(lowest[0], exponent))


def thick_restart(ritz_values: np.ndarray, ritz_vectors: np.ndarray, beta: float, keep: int,
                  capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and projected matrix of a thick restart to the top ``keep`` Ritz vectors.

    With ``S_k`` the eigenvectors of the ``keep`` largest Ritz values ``theta_k`` (columns, in
    descending order of ``theta``), the new basis is ``Y = Q_m S_k`` followed by ``q_{m+1}``, and
    ``A Y = Y diag(theta_k) + beta_m q_{m+1} S_k[-1]^T``: the new projected matrix (``capacity``
    square, zero outside its leading ``keep + 1`` block) is the arrow matrix
    ``[[diag(theta_k), c], [c^T, .]]`` with ``c = beta_m S_k[-1]``. Returns ``(S_k, T)``; the
    caller forms ``Y`` from ``S_k`` (shape ``(m, keep)``) on its own basis.

    >>> import numpy as np
    >>> values, vectors = ritz_pairs(np.diag([1.0, 2.0, 3.0]), 3)
    >>> S, T = thick_restart(values, vectors, 0.5, keep=1, capacity=3)
    >>> np.abs(S).ravel().tolist(), T[:2, :2].tolist()
    ([0.0, 0.0, 1.0], [[3.0, 0.5], [0.5, 0.0]])
    """
    order = np.argsort(ritz_values)[::-1][:keep]
    kept = np.ascontiguousarray(ritz_vectors[:, order])
    T = np.zeros((capacity, capacity))
    T[np.arange(keep), np.arange(keep)] = ritz_values[order]
    T[keep, :keep] = T[:keep, keep] = beta * ritz_vectors[-1, order]
    return kept, T


# --------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------


def lanczos_step(basis: KrylovBasis, T: np.ndarray, w: torch.Tensor, *,
                 reorthogonalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_j, beta_j)`` as 0-d tensors, with ``w = A q_j`` turned in place into
    ``beta_j q_{j+1}`` (``q_j`` = ``basis.last()``, ``j = basis.size - 1``).

    Subtracts the known couplings ``T[i, j]`` (``beta_{j-1} q_{j-1}``, or after a thick restart
    the kept Ritz vectors), then ``alpha_j q_j``, then makes one classical Gram-Schmidt pass
    against the whole basis (full re-orthogonalisation: ``w`` is nearly orthogonal already, so
    one pass suffices for one eigenpair and each step reads the basis twice).
    ``reorthogonalize=False`` skips the pass (plain Lanczos).

    >>> basis = KrylovBasis(torch.zeros(2, dtype=torch.float64))
    >>> basis.append(torch.tensor([1.0, 0.0], dtype=torch.float64))
    >>> w = torch.tensor([2.0, 3.0], dtype=torch.float64)   # A q_0 for A = [[2, 3], [3, 1]]
    >>> alpha, beta = lanczos_step(basis, np.zeros((2, 2)), w)
    >>> float(alpha), float(beta), w.tolist()
    (2.0, 3.0, [0.0, 3.0])
    """
    j = basis.size - 1
    q = basis.last()
    for i in np.flatnonzero(T[:j, j]):
        w.add_(basis.row(int(i)), alpha=-float(T[i, j]))
    alpha = inner_product(q, w, basis.reduce)
    w.add_(q, alpha=-alpha)
    if reorthogonalize:
        h = basis.coefficients(w)
        basis.subtract(w, h)
        alpha = alpha + h[j]
    return alpha, vector_norm(w, basis.reduce)


def lanczos_top_eigenpair(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    max_basis: int = 20,
    reorthogonalize: bool = True,
    reduce=None,
    dimension: int | None = None,
    _fresh_output: bool = False,
) -> EigenEstimate:
    """Largest (algebraic) eigenvalue and its eigenvector of a symmetric operator ``A``.

    Lanczos with full re-orthogonalisation (the three-term step, then one classical
    Gram-Schmidt pass against the whole basis) and thick restarts: from the unit start vector
    ``q_0 = v0/||v0||`` it builds an orthonormal Krylov basis ``Q_m`` with
    ``A Q_m = Q_m T_m + beta_m q_m e_m^T``, ``T_m = Q_m^T A Q_m`` (tridiagonal, or
    arrow-plus-tridiagonal after a restart). The Ritz pair ``(theta, v = Q_m s)`` from the top
    eigenpair ``(theta, s)`` of ``T_m`` has eigen-residual ``||A v - theta v|| = |beta_m s_m|``,
    read off the recurrence at no extra matvec. It stops when
    ``|beta_m s_m| / |theta| <= tol`` (``converged=True``), when the Krylov space becomes
    invariant (``beta_m`` at rounding level: ``theta`` is then exact), or after ``max_iter``
    matvecs (``converged=False``). When the basis reaches ``max_basis`` vectors it keeps the
    top ``max_basis // 2`` Ritz vectors plus ``q_m`` and continues (thick restart), so memory
    stays at ``max_basis`` vectors of ``v0``'s size however many iterations run.

    The basis lives on ``v0``'s device and dtype; per iteration only the two scalars
    ``alpha = q^T A q`` and ``beta`` are copied to the host (the convergence test needs them).
    An operator whose first product's largest entry lies outside ``2**-100 .. 2**100`` (a loss
    scaled by 1e-200) is solved as ``2**-e A`` and its eigenvalue scaled back
    (:func:`~catapult.curvature.krylov.product_exponent`; exact, so the same products and
    rounding), where sums of squares would underflow or overflow.

    Args:
        matvec: ``v -> A v`` on flat tensors shaped like ``v0``; ``A`` must be symmetric.
        v0: non-zero start vector (random, or the previous eigenvector for a warm start).
        tol: relative eigen-residual to reach (a bound on the eigenvalue error).
        max_iter: maximum number of matvecs.
        max_basis: maximum number of basis vectors kept (>= 2).
        reorthogonalize: ``False``: plain Lanczos, no Gram-Schmidt pass (for start vectors:
            orthogonality is lost only along converged Ritz pairs (Paige), adding copies of
            them, not error to the top pair).
        reduce, dimension: for vectors split over the ranks of a process group (each rank's
            ``v0`` and ``matvec`` hold its part, :mod:`catapult.curvature.sharded`): ``reduce``
            sums a tensor over the ranks in place (every inner product goes through it,
            :func:`~catapult.curvature.krylov.inner_product`), ``dimension`` is the whole
            vectors' length (default ``v0.numel()``).

    Returns:
        :class:`EigenEstimate` (``residual`` is the relative residual above). If ``matvec``
        returns non-finite numbers the estimate has ``value = nan`` and ``converged = False``
        (a diverged model is a result, not a crash).

    Example (the largest *algebraic* eigenvalue, 3, not the largest in magnitude, -5):
        >>> A = torch.diag(torch.tensor([3.0, 1.0, -5.0], dtype=torch.float64))
        >>> est = lanczos_top_eigenpair(lambda v: A @ v, torch.ones(3, dtype=torch.float64))
        >>> round(est.value, 6), est.converged, est.matvecs
        (3.0, True, 3)
        >>> est.vector.abs().round(decimals=6)
        tensor([1., 0., 0.], dtype=torch.float64)
    """
    # max_iter=True ran one product, max_basis=3.5 was a basis of 3 and tol=inf called the start
    # vector's Rayleigh quotient converged; max_basis="3" and max_iter=inf failed in Python's words
    tol = check_real("lanczos_top_eigenpair", "tol", tol, low=0.0, low_open=True)
    max_iter = check_integer("lanczos_top_eigenpair", "max_iter", max_iter, high=MAX_PRODUCTS)
    max_basis = check_integer("lanczos_top_eigenpair", "max_basis", max_basis, low=2)
    # a rank's part of a split vector may be empty (a parameter with fewer rows than ranks)
    if v0.dim() != 1 or (v0.numel() == 0 and dimension is None):
        raise ValueError(f"v0 must be a non-empty 1-D tensor, got shape {tuple(v0.shape)}")
    if not v0.is_floating_point():
        raise ValueError(f"v0 must be a floating-point tensor, got {v0.dtype}")
    # int(dimension) took "30" and 30.5 as 30
    n = v0.numel() if dimension is None else check_integer("lanczos_top_eigenpair", "dimension", dimension)
    # 2**e ||2**-e v0||: a v0 of norm < ~1e-154 (squares underflowing to 0) was refused as "non-zero"
    norm0 = scaled_norm(v0, reduce)
    if not (math.isfinite(norm0) and norm0 > 0):
        raise ValueError("v0 must be finite and non-zero")

    capacity, keep = restart_sizes(max_basis, n)
    eps = unit_roundoff(matvec, v0.dtype)

    basis = KrylovBasis(v0, capacity=capacity, reduce=reduce)
    basis.append(v0 / norm0)
    T = np.zeros((capacity, capacity))  # projected matrix Q^T A Q on the host (tiny)
    matvecs = 0
    theta, s, rel, bound = float("nan"), None, float("inf"), float("inf")
    converged = False
    while matvecs < max_iter:
        j = basis.size - 1
        q = basis.last()
        w = matvec(q)
        matvecs += 1
        if w.shape != q.shape:
            raise ValueError(f"matvec returned shape {tuple(w.shape)}, expected {tuple(q.shape)}")
        # The step below works on w in place: copy it unless matvec is known to return a new
        # tensor (the HVP operators here do; a user's matvec may return internal state).
        w = w.to(q.dtype)
        if not _fresh_output:
            w = w.clone()
        if matvecs == 1:
            # the solve runs on 2**-e A (exact): norms of a float64 operator below ~1e-154
            # underflowed (beta = 0: "converged" after 1-2 products, -0.013x the top at 1e-200)
            # and past ~1e154 overflowed (nan); e = 0 for ordinary operators (no work added)
            exponent = product_exponent(w, reduce)
            unscale = math.ldexp(1.0, -exponent)
        if exponent:
            w.mul_(unscale)
        alpha_t, beta_t = lanczos_step(basis, T, w, reorthogonalize=reorthogonalize)
        alpha, beta = torch.stack([alpha_t, beta_t.to(alpha_t.dtype)]).tolist()  # one sync
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            theta, rel, bound, converged, s = float("nan"), float("nan"), float("nan"), False, None
            break
        T = tridiagonal_update(T, j, alpha, beta)
        ritz_values, ritz_vectors = ritz_pairs(T, j + 1)
        theta, s = top_ritz_pair(ritz_values, ritz_vectors)
        # without the pass, n vectors need not span R^n: only a small beta says invariant
        stop, rel = stop_test(beta, ritz_values, s, tol=tol, eps=eps,
                              n=n if reorthogonalize else n + 1 + j, ritz_vectors=ritz_vectors)
        bound = reported_bound(rel, ritz_values, eps)
        converged = bound <= tol
        if stop or matvecs == max_iter:
            break
        q_next = w.div_(beta)
        if basis.size == capacity:  # thick restart: the basis becomes Q S_k (then q_next)
            S_k, T = thick_restart(ritz_values, ritz_vectors, beta, keep, capacity)
            basis.restart(torch.as_tensor(S_k, dtype=q.dtype, device=q.device))
        basis.append(q_next)

    if s is None:  # the operator produced non-finite numbers
        return EigenEstimate(float("nan"), v0 / norm0, matvecs, False, float("nan"))
    vector = basis.combine(torch.as_tensor(s, dtype=v0.dtype, device=v0.device))
    vector /= vector_norm(vector, reduce)
    return EigenEstimate(scaled_back(theta, exponent), vector, matvecs, converged, rel, bound)



# --------------------------------------------------------------------------------------------
# Batched Lanczos
# --------------------------------------------------------------------------------------------


def _orthogonalise_rows(w, q, basis, couple, size):
    """Each row of ``w``: minus the recurrence's terms (``couple`` on the basis' first ``j``
    vectors, ``alpha`` on ``q``), then one full Gram-Schmidt pass on ``basis[:, :size]``; returns
    ``(alpha, h, beta)`` per row. Row by row, with the same 1-D and 2-D kernels whatever the
    number of rows: batched (``bmm``) a member's rounding depended on which members shared its
    batch (a batch of 1 takes another kernel), so an ensemble sweep's measured sharpness changed
    with its chunks, and with a resume (2e-7 in float32). The products run on copies
    (:func:`_own_row`): in place, MKL's dot and gemv rounded by the row's address. Long rows on
    the CPU are summed in chunks (:func:`~catapult.curvature.krylov.inner_product`): one-pass
    float32 sums left a 4e6-entry member 3.2e-6 off its top eigenvalue (with its start's norm in
    chunks too) against an ``error_bound`` of 9.5e-7, converged (in chunks: 4.6e-7)."""
    j = couple.shape[1]
    alphas, hs, betas = [], [], []
    for r in range(w.shape[0]):
        w_r, q_r, basis_r = _own_row(w[r]), _own_row(q[r]), _own_row(basis[r, :size])
        if j:
            w_r.sub_(couple[r] @ basis_r[:j])
        alpha = inner_product(q_r, w_r)
        w_r.sub_(alpha * q_r)
        h = rows_inner_products(basis_r, w_r)
        w_r.sub_(h @ basis_r)
        w[r] = w_r
        alphas.append(alpha)
        hs.append(h)
        betas.append(vector_norm(w_r))
    return torch.stack(alphas), torch.stack(hs), torch.stack(betas)


def _own_row(rows: torch.Tensor) -> torch.Tensor:
    """A member's rows as a fresh tensor, at an address the allocator aligns. MKL's ``dot`` and
    ``gemv`` round by the data's alignment (AVX-512): in place, a member's row offset in its
    chunk (row 3 of 6, or row 0 of 1 after a resume) changed its sharpness by ~1e-8."""
    return rows.clone(memory_format=torch.contiguous_format)


def batched_lanczos(matvec, v0: torch.Tensor, *, tol: Sequence[float], max_iter: Sequence[int],
                    max_basis: int = 20) -> list[EigenEstimate]:
    """Top eigenpairs of ``m`` symmetric operators at once, member by member the iteration of
    :func:`catapult.curvature.lanczos_top_eigenpair`.

    ``matvec(active, V)`` applies operators ``active`` (indices into ``0..m-1``) to the rows of
    ``V`` (``[len(active), n]``) and returns ``[len(active), n]``. ``v0`` is ``[m, n]`` (non-zero
    rows). All members start together, so their Krylov bases have the same size at every
    iteration and restart at the same time (thick restart to the top ``max_basis // 2`` Ritz
    vectors when the basis holds ``min(max_basis, n)``); only their stopping differs: member
    ``k`` stops when ``|beta s_m| / |theta| <= tol[k]`` or the space is invariant
    (``converged``), or after ``max_iter[k]`` matvecs, and is dropped from further products.
    A member whose product is non-finite gets ``value = nan``, ``converged = False`` and its
    normalised start vector. Returns one :class:`~catapult.curvature.EigenEstimate` per row.

    Example (two diagonal operators, top eigenvalues 2 and 5):
        >>> A = torch.stack([torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)),
        ...                  torch.diag(torch.tensor([-1.0, 5.0, 3.0], dtype=torch.float64))])
        >>> def matvec(active, V):
        ...     return torch.einsum("kij,kj->ki", A[torch.as_tensor(active)], V)
        >>> ests = batched_lanczos(matvec, torch.ones(2, 3, dtype=torch.float64),
        ...                        tol=[1e-8, 1e-8], max_iter=[10, 10])
        >>> [round(e.value, 6) for e in ests], [e.converged for e in ests]
        ([2.0, 5.0], [True, True])
    """
    m, n = v0.shape
    # nothing was checked: max_iter=[0] or [3.5] never met ``matvecs == max_iter`` and ran to
    # convergence, [True] stopped after one product, tol=[-1] ran out max_iter, max_basis=True an IndexError
    tol = [check_real("batched_lanczos", f"tol[{k}]", t, low=0.0, low_open=True) for k, t in enumerate(tol)]
    max_iter = [check_integer("batched_lanczos", f"max_iter[{k}]", c, high=MAX_PRODUCTS) for k, c in enumerate(max_iter)]
    if len(tol) != m or len(max_iter) != m:
        raise ValueError(f"batched_lanczos: tol and max_iter need one entry per row of v0 ({m}); "
                         f"got {len(tol)} and {len(max_iter)}")
    max_basis = check_integer("batched_lanczos", "max_basis", max_basis, low=2)
    capacity, keep = restart_sizes(max_basis, n)
    eps = torch.finfo(v0.dtype).eps
    # each row's norm in chunks (vector_norm): one pass over 4e6 float32 entries left the start
    # 7.7e-5 off unit length, and every Ritz value of it 1.5e-4 off; scaled (scaled_norm): a row
    # 2**-530 v gave a value 2.8e-7 off at tol=1e-8, "converged", 2**520 v the value 0.0, "converged"
    norm0 = torch.tensor([scaled_norm(row) for row in v0], dtype=v0.dtype, device=v0.device)
    start = v0 / norm0[:, None]
    basis = v0.new_empty((m, capacity, n))
    basis[:, 0] = start
    T = np.zeros((m, capacity, capacity))
    size, matvecs = 1, 0
    active = np.arange(m)  # the members still iterating ...
    rows = np.arange(m)    # ... and their rows in basis / start / T
    results: list[EigenEstimate | None] = [None] * m
    while len(active):
        j = size - 1
        q = basis[:, j]
        if len(rows) == basis.shape[0]:
            w = matvec(active, q).to(q.dtype).clone()
        else:
            # rows of stopped members ride along in the (cheap) re-orthogonalisation until
            # half of the rows have stopped, and are compacted away then: a gather of the
            # whole basis at every stop costs more than the products at small n
            where = torch.as_tensor(rows, device=q.device)
            w = torch.zeros_like(q)
            w[where] = matvec(active, q[where]).to(q.dtype)
        matvecs += 1
        if matvecs == 1:  # each member on 2**-e A, as lanczos_top_eigenpair (1e-200: -1.7x off, converged)
            exponents = np.array([product_exponent(row) for row in w], dtype=np.int64)
            unscale = torch.as_tensor(np.ldexp(1.0, -exponents), dtype=q.dtype, device=q.device)[:, None]
        if exponents.any():
            w.mul_(unscale)
        couple = torch.as_tensor(T[:, :j, j], dtype=q.dtype, device=q.device)
        alpha_t, h, beta_t = _orthogonalise_rows(w, q, basis, couple, size)
        alpha_t = alpha_t + h[:, j]
        alphas, betas = torch.stack([alpha_t, beta_t.to(alpha_t.dtype)]).tolist()
        finite = np.array([math.isfinite(a) and math.isfinite(b) for a, b in zip(alphas, betas)])
        # a non-finite member stops now; zeros keep its (unused) rows of T finite for eigh
        T = tridiagonal_update(T, j, np.where(finite, alphas, 0.0), np.where(finite, betas, 0.0))
        ritz_values, ritz_vectors = ritz_pairs(T[rows], j + 1)
        done = np.zeros(len(active), dtype=bool)
        for k in range(len(active)):
            member, r = int(active[k]), int(rows[k])
            if not finite[r]:
                results[member] = EigenEstimate(float("nan"), start[r].clone(), matvecs, False, float("nan"))
                done[k] = True
                continue
            theta, s = top_ritz_pair(ritz_values[k], ritz_vectors[k])
            stop, rel = stop_test(betas[r], ritz_values[k], s, tol=tol[member], n=n,
                                  eps=eps, ritz_vectors=ritz_vectors[k])
            bound = reported_bound(rel, ritz_values[k], eps)
            converged = bound <= tol[member]
            if stop or matvecs == max_iter[member]:
                vector = torch.as_tensor(s, dtype=q.dtype, device=q.device) @ _own_row(basis[r, :size])
                vector /= vector_norm(vector)
                results[member] = EigenEstimate(scaled_back(theta, int(exponents[r])), vector, matvecs, converged, rel,
                                                bound)
                done[k] = True
        if done.all():
            break
        # stopped rows may have beta = 0 (or nan): keep their (unused) next vector finite
        q_next = w / torch.where(beta_t > 0, beta_t, torch.ones_like(beta_t))[:, None]
        if size == capacity:  # thick restart of the members still iterating
            for k in np.flatnonzero(~done):
                r = int(rows[k])
                S_k, T[r] = thick_restart(ritz_values[k], ritz_vectors[k], betas[r], keep, capacity)
                basis[r, :keep] = torch.as_tensor(S_k, dtype=q.dtype, device=q.device).T @ _own_row(basis[r, :size])
            basis[:, keep] = q_next
            size = keep + 1
        else:
            basis[:, size] = q_next
            size += 1
        if done.any():
            active, rows = active[~done], rows[~done]
            if len(rows) <= basis.shape[0] // 2:
                sel = torch.as_tensor(rows, device=basis.device)
                basis, start, T = basis[sel], start[sel], T[rows]
                exponents, unscale = exponents[rows], unscale[sel]
                rows = np.arange(len(rows))
    return results  # type: ignore[return-value]
