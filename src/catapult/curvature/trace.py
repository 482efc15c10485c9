"""The trace of the Hessian or the Gauss-Newton matrix (pre-conditioned as
:func:`~catapult.curvature.spectral_operator.curvature_operator` makes it): Hutch++ (Meyer, Musco,
Musco & Woodruff 2021) from a bounded count of products, exact from ``n`` products where the count
reaches the dimension ``n``. Nothing here changes a model's parameters, gradients, buffers or
train/eval mode, an optimizer's state, or the global random number generators.
"""
from __future__ import annotations

import math

import torch

from catapult.arguments import MAX_PRODUCTS, check_integer, check_seed
from catapult.curvature.krylov import inner_product, product_exponent
from catapult.curvature.preconditioner import check_step_optimizer
from catapult.curvature.rank_agreement import same_call_on_every_rank
from catapult.curvature.spectral_operator import curvature_operator
from catapult.curvature.start import outside_autocast, outside_inference_mode, split_operator

__all__ = ["rademacher_probe", "check_matvecs", "hutch_plus_plus", "hessian_trace"]


def _rademacher(shape, gen, dtype, device):
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(dtype=dtype, device=device)


def rademacher_probe(split, n: int, gen, dtype, device) -> torch.Tensor:
    """A Rademacher vector of ``n`` entries drawn from the generator ``gen``, or its part on this
    rank for a ``split`` operator (:func:`~catapult.curvature.start.split_operator`): the probes of
    :func:`hutch_plus_plus` and of :func:`~catapult.curvature.density.spectral_density`.

    >>> rademacher_probe(None, 4, torch.Generator().manual_seed(0), torch.float64, "cpu").abs().tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    return _rademacher((n,), gen, dtype, device) if split is None else split.rademacher(gen)


def _orthonormal_rows(rows: torch.Tensor, reduce=None) -> torch.Tensor:
    """Orthonormal rows spanning ``rows``' row space: a QR factorisation, or for rows split
    over the ranks (``reduce``) two passes of ``M <- Lambda^-1/2 V^T M`` from the eigenvectors of
    the all-reduced Gram matrix ``M M^T = V Lambda V^T`` (rows of a rank-deficient ``M`` with
    ``lambda <= s eps lambda_max`` dropped)."""
    if reduce is None:
        if rows.dtype in (torch.float16, torch.bfloat16):   # (torch has no half-precision QR: NotImplementedError)
            return torch.linalg.qr(rows.T.float())[0].T.to(rows.dtype)
        return torch.linalg.qr(rows.T)[0].T
    eps = torch.finfo(rows.dtype).eps
    # the Gram matrix squares the rows: of products ~1e160 (float64) it was inf, of ~1e-200 zero
    exponent = product_exponent(rows, reduce)
    if exponent:
        rows = rows * math.ldexp(1.0, -exponent)   # (exact: the same orthonormal rows)
    for _ in range(2):
        evals, evecs = torch.linalg.eigh(reduce(rows @ rows.T))
        keep = evals > rows.shape[0] * eps * evals[-1].clamp(min=0)
        rows = (evecs[:, keep] / evals[keep].sqrt()).T @ rows
    return rows


def check_matvecs(matvecs, owner: str = "hessian_trace", n: int | None = None) -> int:
    """``matvecs`` as an int; a ValueError naming ``owner`` unless it is an integer >= 3 (Hutch++'s
    least) whose products are at most :data:`catapult.arguments.MAX_PRODUCTS` (10**5): with the
    operator's dimension ``n`` known, a count ``>= n`` is the exact trace from ``n`` products, so
    ``min(matvecs, n)`` is bounded (``matvecs=10**6`` on a small model is its exact trace; on a
    model of 10**7 parameters it ran until killed).

    >>> check_matvecs(3), check_matvecs(10 ** 6, n=30)
    (3, 1000000)
    >>> check_matvecs(10 ** 6, n=10 ** 7)
    Traceback (most recent call last):
    ...
    ValueError: hessian_trace matvecs must be an integer in [3, 100000], or at least the operator's dimension where that is at most 100000 (the exact trace); got 1000000 for dimension 10000000
    >>> check_matvecs(2.5)
    Traceback (most recent call last):
    ...
    ValueError: hessian_trace matvecs must be an integer >= 3; got 2.5
    """
    matvecs = check_integer(owner, "matvecs", matvecs, low=3)
    if n is not None and min(matvecs, n) > MAX_PRODUCTS:
        raise ValueError(f"{owner} matvecs must be an integer in [3, {MAX_PRODUCTS}], or at least the operator's "
                         f"dimension where that is at most {MAX_PRODUCTS} (the exact trace); got {matvecs} "
                         f"for dimension {n}")
    return matvecs


def hutch_plus_plus(matvec, n: int | None, matvecs: int, *, dtype=torch.float64, device="cpu",
                    seed: int = 0, split=None) -> float:
    """Hutch++ estimate of ``tr(A)`` from ``matvecs`` products (Meyer, Musco, Musco & Woodruff
    2021).

    With ``s = matvecs // 3`` Rademacher vectors ``S`` and ``G`` (``n x s`` each, ``G`` gets the
    remainder): ``Q = orth(A S)``, then
    ``tr(A) ~ tr(Q^T A Q) + tr(G^T (I - QQ^T) A (I - QQ^T) G) / cols(G)``: exact on the
    dominant subspace, Hutchinson on the rest (variance ``O(1/matvecs^2)`` for a fast-decaying
    spectrum instead of ``O(1/matvecs)``). Needs ``matvecs >= 3``; memory: ``A S`` and ``Q``
    (``2 s`` parameter-sized vectors) while ``Q`` is formed, then ``Q`` and three more (the
    probes and their products are taken one at a time). With ``matvecs >= n`` the trace is exact instead, from the ``n`` products
    ``A e_i`` (fewer than asked, and one vector at a time).

    ``split``: for vectors split over the ranks, the operator that splits them (a
    :class:`~catapult.curvature.sharded.ShardedHessianOperator` with ``vectors="local"``, see
    :func:`~catapult.curvature.start.split_operator`): the probes are its
    :meth:`~catapult.curvature.sharded.ShardedHessianOperator.rademacher` parts of the whole
    vectors one process would draw, and inner products are summed over the ranks. ``n`` is then
    the whole vectors' length, ``split.dimension``: pass it or ``None``.

    Example (exact when ``Q`` spans the whole space):
        >>> A = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
        >>> round(hutch_plus_plus(lambda v: A @ v, 3, 9), 6)
        6.0
    """
    matvecs = check_matvecs(matvecs, "hutch_plus_plus")
    seed = check_seed("hutch_plus_plus", "seed", seed, optional=False)  # int(seed): 3.5 and "3" were the seed 3
    if split is not None and n is None:
        n = split.dimension
    if split is not None and n != split.dimension:
        raise ValueError(f"n = {n} is not the split vectors' whole length {split.dimension}: pass n=None")
    n = check_integer("hutch_plus_plus", "n", n)  # the operator's dimension
    check_matvecs(matvecs, "hutch_plus_plus", n)
    reduce = None if split is None else split.reduce

    def dot(a, b):
        return float(inner_product(a, b, reduce))

    if matvecs >= n:
        unit = torch.zeros(n, dtype=dtype, device=device)
        total = 0.0
        for i in range(n):
            unit[i] = 1.0
            e = unit if split is None else split.localize(unit).to(device=device, dtype=dtype)
            total += dot(e, matvec(e).to(dtype))
            unit[i] = 0.0
        return total
    gen = torch.Generator().manual_seed(seed)
    s = matvecs // 3
    g_cols = matvecs - 2 * s
    AS = torch.stack([matvec(rademacher_probe(split, n, gen, dtype, device)).to(dtype) for _ in range(s)])
    Q = _orthonormal_rows(AS, reduce)                            # orthonormal rows
    del AS
    exact = sum(dot(q, matvec(q).to(dtype)) for q in Q)

    def project(v):                                               # (I - QQ^T) v
        coeffs = Q @ v
        return v.sub_(Q.T @ (coeffs if reduce is None else reduce(coeffs)))
    rest = 0.0
    for _ in range(g_cols):
        g = project(rademacher_probe(split, n, gen, dtype, device))
        rest += dot(g, project(matvec(g).to(dtype, copy=True)))
    return exact + rest / g_cols


@outside_inference_mode
@outside_autocast
@same_call_on_every_rank
def hessian_trace(model, loss_fn, batch, *, matvecs: int = 100, curvature: str = "hessian",
                  optimizer=None, dtype=None, hvp: str = "auto", seed: int = 0,
                  chunk_size: int | None = None, distributed: bool = False,
                  scale_by_group_lr: bool = False) -> float:
    """``tr(H)`` (or of the Gauss-Newton matrix, or pre-conditioned ``tr(P^-1 A)`` with an
    ``optimizer``: Adam-family, or SGD with ``scale_by_group_lr`` for ``tr(M A)``, as in
    :func:`~catapult.curvature.spectrum.top_eigenpairs`) by :func:`hutch_plus_plus` with ``matvecs`` products.

    Example (``tr diag(4, 1) = 5``; exact here as the space has 2 dimensions):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> round(hessian_trace(model, torch.nn.MSELoss(), batch, matvecs=6), 4)
        5.0
    """
    matvecs = check_matvecs(matvecs)  # before the operator (and an optimizer's gradient) is built
    if optimizer is not None:
        check_step_optimizer(optimizer, "hessian_trace")
    op = curvature_operator(model, loss_fn, batch, curvature=curvature, optimizer=optimizer,
                            dtype=dtype, hvp=hvp, seed=seed, chunk_size=chunk_size,
                            distributed=distributed, scale_by_group_lr=scale_by_group_lr,
                            sharded_vectors="local")
    split = split_operator(op)
    check_matvecs(matvecs, n=op.numel if split is None else split.dimension)  # named as hessian_trace's
    return hutch_plus_plus(op, op.numel if split is None else None, matvecs, dtype=op.dtype,
                           device=op.device, seed=seed, split=split)
