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
``value = theta`` kept (the bound never below the solver's own rounding floor,
:func:`solver_floor`: at a stationary point the products' rounding ``eps ||g|| / h`` is 0). Why ``r + e`` bounds the eigenvalue's error: ``||H y - theta y|| <=
||D_h y - theta y|| + ||(D_h - H) y||``, and some eigenvalue of the symmetric ``H`` lies within
that of ``theta`` (Bauer-Fike). The last term is estimated, not bounded: ``D_2h - D_h`` is three
times ``D_h``'s truncation error (which grows as ``h^2``) and 1.1x its rounding error (which
shrinks as ``1 / h``). ``theta`` is kept rather than ``y^T D_h y``: along a pre-conditioned
top eigenvector the product's truncation error is large (2e-3 in float32 on that GPT after 3
Adam steps, exactly ``~ h^2``) while the Ritz value, built from products of the Krylov vectors,
was 1e-5 off (its Krylov vectors are not aligned with ``y``, and the truncation error is cubic in
the direction).

Where that pair leaves ``r + e > tol``, a third product at ``1.5 h`` gives Richardson's
extrapolants, which cancel the ``h^2`` term (central differences have even powers only)::

    X = (4 D_h y - D_2h y) / 3,   X' = (2.25 D_h y - D_1.5h y) / 1.25
    r_x = ||X - theta y|| / |theta|,   e_x = 2.5 ||X - X'|| / |theta|

and the smaller of ``r + e`` and ``r_x + e_x`` is reported (:data:`EXTRAPOLATION_MARGIN` says
where 2.5 comes from). On that pre-conditioned GPT this took ``tol=1e-3`` from 1 seed of 6 to 6
of 6, with no restarts.

Where the reported bound is above ``tol`` but its ``e`` is below it, the solve is taken again from
``y``, with what is left of ``max_iter`` and a tolerance of ``(tol - e) / 2``, at most
:data:`RESTARTS` times; each round ends with these products. On the one-block GPT's plain
Hessian in float32 the restarts take ``tol=1e-3`` from 5 seeds of 6 to 6 of 6. A solve from ``y``
takes its first product along ``y``, so its Ritz value carries up to that product's error: within
the bound, but it can be less accurate than the first solve (with two products only, the
pre-conditioned GPT's seed 1 at ``tol=1e-2`` came out 1.6e-3 off after a restart, bound 7.5e-3).
All these products are counted in ``matvecs``, beyond ``max_iter`` by three at most. A step
``2 h`` that the kink check refuses at every retry leaves ``e`` infinite.

What holds: ``r`` is taken and Bauer-Fike is a theorem, but ``e`` (and ``e_x``) only estimate the
products' error along ``y``, so ``error_bound`` is a bound only as far as they do; nothing at hand
bounds a gradient's rounding (on a one-parameter tanh model whose units saturate it was 52
``eps ||g|| / h``, where ``1 - tanh^2`` cancels). ``e`` is kept at least :data:`ROUNDING_FLOOR`
``eps ||g|| / h`` (relative), since ``D_2h y - D_h y``, two draws of the rounding, can cancel:
with one parameter ``r = 0`` and ``D_2h y`` came out equal to ``D_h y`` bit for bit, 4e-5 off,
reported as converged at ``tol=1e-6``. Where the products' error spreads over many coordinates,
``r`` holds most of it and the eigenvalue's error is the small part along ``y``: no solve was off
by more than its bound on the GELU GPT (1,040 parameters), a tanh MLP (51) or tanh / GELU / ReLU
MLPs 3-4-1 (21), and one float32 solve of 432 on 3-4-parameter quadratics and cubics (a fuzz of
sharpness, top_eigenpairs and preconditioned_sharpness, float32 and float64, tol 1e-2 .. 1e-6).
With one parameter (a tanh unit) it was: float32 sharpness 28 solves of 216 (47 before the floor),
by up to 3.6x (1.5e-2 off, bound 4.2e-3), float64 0 of 216 (12 before; 3 of 120 with larger
weights, by up to 4x; on another CPU, an AVX-512 Xeon whose tanh rounds otherwise, 1 of 80 of
``tests/test_difference_certificate.py``'s, by 1.19x); Adam-pre-conditioned,
float32 19 of 144, float64 6 of 144 (22 and 12 before; up to 2.6x, 8.4x before).

The thread count moves a float32 difference solve's digits, not its promise: ``torch.dot`` over
the parameter vector (the Lanczos recurrence) splits its float32 sum by thread, and each product's
rounding ``~ eps ||g|| / h`` depends on its vector, so a vector that moved by rounding gets another
draw. On a 76,810-parameter tanh MLP the products were bit for bit equal at 1 and 4 threads and
the values 2.4e-7 apart (exact products: 3.3e-9), against bounds of 7.9e-4; on 2,048 and 4,096
samples, 1-4 threads, spreads of 2.7e-7 .. 8.8e-7 against bounds of 2.6e-4 .. 7.5e-4, every value
within its bound of the float64 truth (``bench/probe_fd_threads.py``,
``tests/test_fd_threads.py``). Seeds reproduce a run bit for bit at a fixed thread count only.

A float32 pre-conditioned solve (:func:`~catapult.curvature.sharpness.preconditioned_sharpness`) ends
with one more look, whatever its products: ``d = P^-1/2`` magnifies the rounding of ``H``'s products on
the rows of small ``P``, and the gradient's rounding moves ``P`` there, so the recurrence's residual can
be small for an operator ``P^-1/2 H P^-1/2`` that float32 does not hold. :func:`rounding_reach`
estimates how far along the solve's vector; where that exceeds ``tol``, :func:`checked_in_float64`
takes the residual of the same vector in float64 (``P`` and the product), which Bauer-Fike makes a
bound on the float64 operator.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from catapult.curvature.difference import difference_operator, scaled_step
from catapult.curvature.krylov import operator_chain, scaled_norm, unit_roundoff, vector_norm
from catapult.curvature.lanczos import EigenEstimate
from catapult.curvature.stopping import ERROR_FLOOR_ULPS, error_floor
from catapult.curvature.top_k import Eigenpairs

__all__ = ["RESTARTS", "CHECK_STEP_FACTOR", "MIDDLE_STEP_FACTOR", "EXTRAPOLATION_MARGIN", "ROUNDING_FLOOR",
           "certified", "certified_pairs", "measured", "solver_floor", "rounding_reach",
           "checked_in_float64", "with_reach", "float32_certified"]

#: Solves taken again from the last vector when its bound ``r + e``, taken, is above ``tol``.
RESTARTS = 2
#: The second step of the error estimate, a multiple of the first.
CHECK_STEP_FACTOR = 2.0
#: The third step, taken only where the first two leave ``r + e > tol``: between the two, where the
#: kink check's gap (growing with the step where truncation dominates, shrinking where rounding
#: does) has passed at both ends.
MIDDLE_STEP_FACTOR = 1.5
#: ``e`` of the extrapolated product is this times the distance between the two extrapolants. For
#: ``D(s) = H y + c_2 s^2 + c_4 s^4 + rho / s`` (``rho`` independent per step) the extrapolant's
#: error is 2.29x that distance where ``c_4`` dominates and 1.85x where rounding does.
EXTRAPOLATION_MARGIN = 2.5
#: ``e`` is at least this times ``eps ||g(theta)|| / h`` (relative to ``|theta|``): the rounding of a
#: difference product of a unit vector whose gradients are off by about an ulp in each entry
#: (:data:`~catapult.curvature.difference.ROUNDING_ULPS` measured ~2 ``eps ||g||`` for a second
#: difference of four gradients, ~0.6 ``eps ||g|| / h`` for a product). A typical size, not a bound.
#: Measured free: the same products on the GPT and tanh MLPs of ``bench/probe_difference_certificate.py``;
#: 4x this took convergence from 12 of 432 float32 solves on tanh / GELU MLPs (21 parameters).
ROUNDING_FLOOR = 1.0


def certified(matvec, est: EigenEstimate, *, tol: float, max_iter: int,
              solve: Callable[[torch.Tensor, int, float], EigenEstimate], reduce=None) -> EigenEstimate:
    """``est`` as it stands against the Hessian where ``matvec``'s products are differences (the
    module docstring), else ``est`` itself (whose ``vector`` it scales to unit norm in place).
    ``solve(v0, budget, tol)`` runs the solve again from ``v0`` (which it may write into) with at
    most ``budget`` products to its own ``tol``;
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
    >>> out = certified(op, est, tol=1e-2, max_iter=3, solve=None)   # no products left to solve again
    >>> out.value, out.residual, out.error_bound, out.converged, out.matvecs
    (4.0, 0.005, 0.01, True, 4)
    """
    fd = difference_operator(matvec)
    if fd is None or not math.isfinite(est.value):
        return est
    used, restarts = est.matvecs, 0
    while True:
        # the solver's own vector, made unit in place (no copy: memory="lean" counts its vectors)
        y, theta = est.vector.div_(vector_norm(est.vector, reduce)), est.value
        floor = solver_floor(matvec, est, y.dtype)
        residual, error, products = measured(matvec, fd, y, theta, reduce, tol)
        used += products
        if not math.isfinite(residual):   # a non-finite product (norms are the ranks' sums: all agree)
            return EigenEstimate(math.nan, y, used, False, math.nan, math.nan, est.coarse_matvecs, est.coarse_cost)
        # not below the rounding the solver's own value keeps: at a stationary point (g = 0) the products'
        # rounding floor eps ||g|| / h is 0, and float32 solves at tol=1e-7 (float64 at 1e-15) were called
        # converged with bounds of 2e-8 (6e-17) for errors of 8e-8 (2e-16)
        bound = max(residual + error, floor)
        if bound <= tol or not error < tol or floor > tol or restarts == RESTARTS or used >= max_iter:
            return EigenEstimate(theta, y, used, bool(bound <= tol), residual, bound, est.coarse_matvecs,
                                 est.coarse_cost)
        # half of what e leaves of tol: the solve's own test is the recurrence's, not the residual
        est = solve(y, max_iter - used, (tol - error) / 2)   # y is not needed after: the solve may write into it
        used += est.matvecs
        restarts += 1
        if not math.isfinite(est.value):
            return EigenEstimate(math.nan, y, used, False, math.nan, math.nan, est.coarse_matvecs, est.coarse_cost)


def solver_floor(matvec, est: EigenEstimate, dtype: torch.dtype) -> float:
    """The rounding floor under ``est.error_bound`` (:func:`~catapult.curvature.stopping.error_floor`):
    ``ERROR_FLOOR_ULPS eps scale / |value|`` of the solver's spectrum scale where it reported that
    floor (its bound above its residual), else of ``|value|``, the least that scale can be; ``eps``
    the coarsest rounding ``matvec`` computes in (:func:`~catapult.curvature.krylov.unit_roundoff`).

    >>> est = EigenEstimate(4.0, torch.ones(2, dtype=torch.float64), 3, True, 0.0, 0.0)
    >>> solver_floor(lambda v: v, est, torch.float64) == 8 * 2.0 ** -52
    True
    """
    floor = error_floor(est.value, abs(est.value), unit_roundoff(matvec, dtype))
    return max(floor, est.error_bound) if est.error_bound > est.residual else floor


def measured(matvec, fd, y: torch.Tensor, theta: float, reduce=None, tol: float = 0.0, *,
             largest: float | None = None) -> tuple[float, float, int]:
    """``(r, e, products)`` for the unit vector ``y`` and the value ``theta`` (the module
    docstring): ``r`` and ``e`` from products at the step of ``fd`` (the difference operator behind
    ``matvec``) and at :data:`CHECK_STEP_FACTOR` times it; where ``r + e > tol``, also the
    extrapolated pair from a third product at :data:`MIDDLE_STEP_FACTOR` times it, if its sum is
    smaller. ``e`` is infinite where the kink check refuses every retry of the second step. Both
    are relative to ``|theta|``; with ``largest`` (the largest ``|theta_i|`` of a top-k solve) to
    ``max(|theta|, m)`` instead, ``m = min(max(100 eps largest, 12.5 rho) / tol, largest)`` with ``rho``
    the products' rounding along ``y`` (:data:`ROUNDING_FLOOR`): the floor by which
    :func:`~catapult.curvature.top_k.lanczos_top_k` judges an eigenvalue the arithmetic does not
    resolve (a zero of a rank-deficient Hessian), with what difference products resolve in place
    of an exact product's ``eps spread``; ``e`` is then at least that solver's rounding floor
    ``ERROR_FLOOR_ULPS eps largest`` over the same.

    Example: ``2 I`` whose products are off by ``1e-3 (s h)^2`` along the other coordinate (pure
    truncation, ``s`` the step's multiple): the pair from two products says ``1e-3 + 3e-3``; the
    extrapolated one cancels the error and says 0:

    >>> class Differences:
    ...     mode, step_factor = "finite_difference", 1.0
    ...     def __call__(self, v):
    ...         return 2.0 * v + 1e-3 * self.step_factor ** 2 * v.flip(0)
    >>> op, y = Differences(), torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> [round(x, 6) for x in measured(op, op, y, 2.0, tol=1e-2)]     # r + e within tol: two products
    [0.0005, 0.0015, 2]
    >>> [round(x, 6) for x in measured(op, op, y, 2.0, tol=1e-3)]
    [0.0, 0.0, 3]
    """
    # norms as 2**e ||2**-e x|| (krylov.scaled_norm): a loss scaled by 2**531 overflowed them (e = inf: not
    # converged), one by 2**-664 underflowed r, e and the floor to 0 (error_bound 0.0, a claim of exactness)
    rounding = _rounding_floor(matvec, fd, y, reduce)   # before the products: one vector, freed
    over = theta if largest is None else max(abs(theta), _smallest(matvec, y.dtype, largest, rounding, tol))
    floor = _relative(rounding, over)
    if largest is not None:   # and not below the exact solver's rounding floor over the same (lanczos_top_k's):
        # at a stationary point rounding is 0, and float32 pairs at tol=1e-7 were converged with 3e-8
        floor = max(floor, _relative(ERROR_FLOOR_ULPS * unit_roundoff(matvec, y.dtype) * largest, over))
    # in place, three vectors beside y (one more than memory="lean"'s solver keeps): each product returned is
    # the operator's own fresh tensor
    product = matvec(y)
    delta = _product_at(matvec, fd, y, CHECK_STEP_FACTOR)
    if delta is not None:
        delta.sub_(product)                                   # D_2h y - D_h y
    remainder = product.sub_(y, alpha=theta)                  # D_h y - theta y
    residual = _relative(scaled_norm(remainder, reduce), over)
    if delta is None:
        return residual, math.inf, 2
    # not below the rounding the products carry: two draws of it can cancel (one parameter: r = 0, and D_2h y
    # came out equal to D_h y, 1e-4 off, in float32)
    error = max(_relative(scaled_norm(delta, reduce), over), floor)
    if residual + error <= tol or not math.isfinite(residual):
        return residual, error, 2
    middle = _product_at(matvec, fd, y, MIDDLE_STEP_FACTOR)
    if middle is None:
        return residual, error, 3
    k2, m2 = CHECK_STEP_FACTOR ** 2, MIDDLE_STEP_FACTOR ** 2
    # X = D_h y - delta / (k^2 - 1) and X' = D_h y - (D_mh y - D_h y) / (m^2 - 1): the h^2 term cancelled
    spread = middle.sub_(remainder).sub_(y, alpha=theta).div_(m2 - 1.0).sub_(delta, alpha=1.0 / (k2 - 1.0))
    error_x = max(EXTRAPOLATION_MARGIN * _relative(scaled_norm(spread, reduce), over),   # X - X'
                  math.sqrt(k2 ** 2 + 1.0 / k2) / (k2 - 1.0) * floor)   # X = (k^2 D_h - D_kh) / (k^2 - 1)'s rounding
    residual_x = _relative(scaled_norm(remainder.sub_(delta, alpha=1.0 / (k2 - 1.0)), reduce), over)
    if residual_x + error_x < residual + error:
        return residual_x, error_x, 3
    return residual, error, 3


def _product_at(matvec, fd, y: torch.Tensor, factor: float) -> torch.Tensor | None:
    """``matvec(y)`` with ``fd``'s step times ``factor``; None where the kink check refuses every
    retry."""
    with scaled_step(fd, factor):
        try:
            return matvec(y)
        except ValueError:
            return None


def _rounding_floor(matvec, fd, y: torch.Tensor, reduce=None) -> float:
    """The size of the rounding in ``matvec(y)`` that ``fd``'s ``difference_rounding`` implies (an ulp or
    so of each gradient entry: :data:`ROUNDING_FLOOR` ``eps ||g|| / h`` for a unit vector), through
    the wrappers between them: a pre-conditioner's ``d * A(d * y)`` takes the product of ``d * y`` and
    scales its rounding by ``d``. 0 where ``fd`` does not say (the operators of the examples here)."""
    rounding = getattr(fd, "difference_rounding", None)
    if rounding is None:
        return 0.0
    scale = None
    for op in operator_chain(matvec):
        if op is fd:
            break
        d = getattr(op, "d", None)
        if d is not None:
            scale = d if scale is None else scale * d
    if scale is None:
        return ROUNDING_FLOOR * rounding()
    return ROUNDING_FLOOR * rounding(scale) * scaled_norm(scale * y, reduce)


def _smallest(matvec, dtype: torch.dtype, largest: float, rounding: float, tol: float) -> float:
    """``m`` of :func:`measured`: where the least bound a pair can claim is ``tol / 12.5``, as in
    :func:`~catapult.curvature.top_k.lanczos_top_k`, whose ``m = 100 eps largest / tol`` puts its
    residuals' floor ``ERROR_FLOOR_ULPS eps largest`` (8 ulps) at 8% of ``tol m``; here the floor is
    the larger of that and the products' rounding ``rounding`` (``e`` is never below it):
    ``min(max(100 eps largest, 12.5 rounding) / tol, largest)``, at least 1e-300."""
    least = max(ERROR_FLOOR_ULPS * unit_roundoff(matvec, dtype) * largest, rounding)
    return max(min(100.0 / ERROR_FLOOR_ULPS * least / tol, largest) if tol > 0 else largest, 1e-300)


def _relative(size: float, theta: float) -> float:
    """``size / |theta|``; for ``theta = 0``, 0 when ``size`` is 0 and infinite otherwise (nan stays nan)."""
    if theta:
        return size / abs(theta)
    return size if size == 0 or math.isnan(size) else math.inf


def certified_pairs(matvec, eig: Eigenpairs, *, tol: float, reduce=None) -> Eigenpairs:
    """``eig`` (top-k pairs) as they stand against the Hessian where ``matvec``'s products are
    differences, else ``eig`` itself: each pair's ``residuals[i]`` becomes its bound of the module
    docstring (:func:`measured`: two or three products per pair, counted in ``matvecs``; no second
    solve), relative to ``|theta_i|`` floored as the exact solver floors it (``largest``, its
    ``scale`` where known: an eigenvalue below what the difference products resolve, a zero of a
    rank-deficient Hessian, is judged by its absolute bound), and ``converged`` says whether every
    one is within ``tol``.

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
    bounds, extra = [], 0
    # relative to |theta_i| floored as lanczos_top_k floors it: a zero of a rank-deficient Hessian
    # was divided by its own |theta| ~ 1e-16 (float64 differences, 21-parameter tanh MLP past its
    # rank: bounds 13 .. 310, converged=False, where the exact solver converged to 8e-5)
    # the exact solver's scale (every Ritz value, a negative-dominated spectrum's too: top 3 of a concave
    # quadratic are zeros, and their own largest |theta| ~ 2e-11 left bounds of 5.7 .. 7.6)
    largest = max([abs(v) for v in eig.values] + ([eig.scale] if eig.scale is not None and math.isfinite(eig.scale)
                                                   else []))
    for theta, y in zip(eig.values, eig.vectors):
        residual, error, products = measured(matvec, fd, y, theta, reduce, tol, largest=largest)
        bounds.append(residual + error)
        extra += products
    converged = all(b <= tol for b in bounds)   # False for a nan bound
    return Eigenpairs(list(eig.values), eig.vectors, eig.matvecs + extra, converged, bounds, scale=eig.scale)


def rounding_reach(d: torch.Tensor, y: torch.Tensor, gradient: torch.Tensor, reduce=None) -> float:
    """How far float32 rounding can move the Ritz value of ``d * H(d * y)`` along the unit vector ``y``,
    relative: ``ERROR_FLOOR_ULPS eps max P sum_i y_i^2 / P_i`` with ``P = d^-2`` (its largest over
    ``d != 0``), the sum over the rows whose ``gradient`` entry is not 0: the rounding of ``H z`` is of
    ``||H|| ||z||``, ``||H|| <= |theta| max P``, and ``d`` magnifies it on the rows of small ``P`` as far
    as ``y`` lies there; where ``P`` is small by rounding of the gradient (``|g| ~ eps ||g||``), ``P`` itself
    moves by up to ``eps max P / P`` of itself. A row whose gradient is exactly 0 (an input pixel that is
    0 in every sample: its Hessian row is 0 too, and so is its rounding) does not count.

    >>> g = torch.ones(3)
    >>> f"{rounding_reach(torch.tensor([1.0, 10.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), g):.2e}"
    '9.54e-07'
    >>> d, y = torch.tensor([1.0, 10.0]), torch.tensor([0.6, 0.8])   # P = (1, 0.01): y's second row x 100
    >>> f"{rounding_reach(d, y, torch.ones(2)):.2e}", f"{rounding_reach(d, y, torch.tensor([1.0, 0.0])):.2e}"
    ('6.14e-05', '3.43e-07')
    """
    counted = d[d != 0]
    if counted.numel() == 0:
        return 0.0
    d_min = float(counted.abs().min())
    rows = (d * y).double().masked_fill_(gradient == 0, 0.0)
    weighted = float(vector_norm(rows, reduce)) ** 2 / float(vector_norm(y.double(), reduce)) ** 2
    return ERROR_FLOOR_ULPS * float(torch.finfo(torch.float32).eps) * weighted / d_min ** 2


def checked_in_float64(est: EigenEstimate, product: Callable[[torch.Tensor], torch.Tensor], tol: float,
                       reduce=None) -> EigenEstimate:
    """``est`` (a float32 solve) with its certificate taken again in float64: ``product(y)`` applies
    the operator in float64 (its ``P`` too) to the unit vector ``y`` (``est.vector`` in float64);
    ``residual`` is ``||A y - theta y|| / |theta|`` and ``error_bound`` that, not below float64's
    rounding floor (:func:`~catapult.curvature.stopping.error_floor`): some eigenvalue of the float64
    operator lies within it of ``theta`` (Bauer-Fike). ``converged`` says whether that is within
    ``tol``; ``value``, ``vector`` and ``matvecs`` are ``est``'s (the check is not counted there).

    >>> A = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    >>> est = EigenEstimate(4.001, torch.tensor([1.0, 0.0]), 3, True, 1e-7, 1e-7)
    >>> out = checked_in_float64(est, lambda y: A @ y, tol=1e-3)
    >>> round(out.error_bound, 8), out.converged, out.value, out.vector.dtype
    (0.00024994, True, 4.001, torch.float32)
    >>> checked_in_float64(est, lambda y: A @ y, tol=1e-4).converged
    False
    """
    y = _unit_float64(est.vector, reduce)
    return _float64_bound(est, y, product(y), tol, reduce)


def _unit_float64(vector: torch.Tensor, reduce=None) -> torch.Tensor:
    y = vector.to(torch.float64)
    return y / vector_norm(y, reduce)


def _float64_bound(est: EigenEstimate, y: torch.Tensor, product: torch.Tensor, tol: float,
                   reduce=None) -> EigenEstimate:
    """:func:`checked_in_float64`'s answer from the float64 operator's ``product`` along ``y``."""
    theta = est.value
    residual = _relative(scaled_norm(product.sub_(y, alpha=theta), reduce), theta)
    bound = max(residual, error_floor(theta, abs(theta), float(torch.finfo(torch.float64).eps)))
    if math.isnan(residual):
        bound = math.nan
    return EigenEstimate(theta, est.vector, est.matvecs, bool(bound <= tol), residual, bound,
                         est.coarse_matvecs, est.coarse_cost)


def with_reach(est: EigenEstimate, reach: float, tol: float) -> EigenEstimate:
    """``est`` with ``error_bound`` at least ``reach`` (:func:`rounding_reach`) and ``converged`` only where
    that is within ``tol`` (in place).

    >>> est = EigenEstimate(4.0, torch.tensor([1.0, 0.0]), 3, True, 1e-7, 1e-7)
    >>> out = with_reach(est, 2e-4, tol=1e-3)
    >>> out.error_bound, out.converged, with_reach(est, 2e-3, tol=1e-3).converged
    (0.0002, True, False)
    """
    bound = max(est.error_bound, reach)   # (nan stays nan)
    est.converged, est.error_bound = bool(est.converged and bound <= tol), bound
    return est


#: What :func:`float32_certified` catches of a float64 check that cannot run: a forward that makes float32
#: tensors itself (``x.float()``, a state it carries), in :func:`~catapult.curvature.modes.named_dtype_mix`'s words.
_TWO_DTYPES = "forward meets tensors of two dtypes"


def float32_certified(ests, reaches, tols, product=None, *, checks=None, reduce=None) -> list[EigenEstimate]:
    """The end of float32 pre-conditioned solves (the module docstring's last paragraph), one or several side
    by side (the batched sweep engines' members): each solve whose ``reaches[i]`` (:func:`rounding_reach`)
    is within ``tols[i]`` keeps its certificate with the reach folded into ``error_bound``
    (:func:`with_reach`); the others are taken again in float64 (:func:`checked_in_float64`'s bound) by one
    call ``product(positions, Y)``, which applies the float64 operators of solves ``positions`` (indices
    into ``ests``) to the rows of ``Y`` (their unit vectors in float64) and returns those products. Where
    the float64 check cannot run (``product`` None: a device without float64; a forward that makes its
    own float32 tensors), the reach is folded in instead. ``checks`` (one bool per solve) decides which
    are checked where the caller must (ranks that agree); ``reach > tol`` otherwise. A solve whose value
    is not finite is returned as it came. The ``ests`` may be changed in place.

    >>> A = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    >>> ests = [EigenEstimate(4.001, torch.tensor([1.0, 0.0]), 3, True, 1e-7, 1e-7),
    ...         EigenEstimate(4.001, torch.tensor([1.0, 0.0]), 3, True, 1e-7, 1e-7)]
    >>> out = float32_certified(ests, [1e-5, 5e-3], [1e-3, 1e-3], lambda positions, Y: Y @ A)
    >>> [(round(e.error_bound, 8), e.converged) for e in out]   # the first within tol; the second checked
    [(1e-05, True), (0.00024994, True)]
    """
    ests = list(ests)
    checks = [r > t for r, t in zip(reaches, tols)] if checks is None else list(checks)
    finite = [math.isfinite(e.value) for e in ests]
    todo = [i for i in range(len(ests)) if finite[i] and checks[i]] if product is not None else []
    if todo:
        ys = [_unit_float64(ests[i].vector, reduce) for i in todo]
        try:
            products = product(todo, torch.stack(ys))
        except ValueError as err:
            if _TWO_DTYPES not in str(err):
                raise
            todo = []
        for k, i in enumerate(todo):
            ests[i] = _float64_bound(ests[i], ys[k], products[k], tols[i], reduce)
    for i in range(len(ests)):
        if finite[i] and i not in todo:
            ests[i] = with_reach(ests[i], reaches[i], tols[i])
    return ests
