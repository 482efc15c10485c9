"""The eigenvalue density of the Hessian or the Gauss-Newton matrix (pre-conditioned as
:func:`~catapult.curvature.spectral_operator.curvature_operator` makes it) by stochastic Lanczos
quadrature (Ghorbani, Krishnan & Xiao 2019): :func:`lanczos_quadrature` from Rademacher probes,
smoothed on a grid. Nothing here changes a model's parameters, gradients, buffers or train/eval
mode, an optimizer's state, or the global random number generators.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from catapult.arguments import MAX_PRODUCTS, caller_stacklevel, check_integer, check_real
from catapult.curvature.krylov import product_exponent, scaled_back, scaled_norm, vector_norm
from catapult.curvature.preconditioner import check_step_optimizer
from catapult.curvature.rank_agreement import same_call_on_every_rank
from catapult.curvature.spectral_operator import curvature_operator
from catapult.curvature.start import (check_max_basis, outside_autocast, outside_inference_mode, solver_split,
                                      split_operator)
from catapult.curvature.trace import rademacher_probe

__all__ = ["MAX_GRID_POINTS", "SIGMA_MAX", "SIGMA_MIN", "SpectralDensity", "check_density_products",
           "lanczos_quadrature", "spectral_density", "check_sigma", "warn_coarse_grid"]

#: The most grid points :func:`spectral_density` draws its density on (a plot has ~10**3 pixels
#: across; 10**9 was a MemoryError after every product had been spent).
MAX_GRID_POINTS = 10 ** 6


def check_density_products(runs: int, steps: int, n: int | None = None, owner: str = "spectral_density") -> None:
    """A ValueError naming ``owner`` unless the products :func:`spectral_density` runs, ``runs x
    min(steps, n)``, are at most :data:`catapult.arguments.MAX_PRODUCTS` (10**5): a run of
    Lanczos quadrature stops at the operator's dimension ``n`` (``None``: not known yet, so
    ``steps`` counts), so ``steps=10**4`` with 100 runs on a 30-parameter model is 3,000 products.

    >>> check_density_products(100, 10 ** 4, n=30)
    >>> check_density_products(100, 10 ** 4)
    Traceback (most recent call last):
    ...
    ValueError: spectral_density runs x steps must be at most 100000 products; got 100 x 10000 = 1000000
    """
    ran = steps if n is None else min(steps, n)
    if runs * ran > MAX_PRODUCTS:  # runs=1000, steps=1000: 10**6 products
        at = "" if ran == steps else f" (steps capped at the operator's dimension {n})"
        raise ValueError(f"{owner} runs x steps must be at most {MAX_PRODUCTS} products; got "
                         f"{runs} x {ran} = {runs * ran}{at}")



@dataclass
class SpectralDensity:
    """Smoothed eigenvalue density ``grid``/``density`` (numpy arrays; ``density`` integrates to
    ~1 over the grid where its spacing is at most ``sigma``; :func:`spectral_density` warns where it
    does not) and the quadrature ``nodes``/``weights`` (``runs x min(steps, n)``, ``n`` the operator's
    dimension) it came from; ``matvecs``: the products spent (a run that reaches an invariant
    subspace stops early, its nodes padded with zero weights), ``None`` where not counted.

    >>> d = SpectralDensity(np.zeros(3), np.ones(3), np.ones((1, 1)), np.ones((1, 1)), 0.1)
    >>> d.grid.shape, d.sigma
    ((3,), 0.1)
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    matvecs: int | None = None


def lanczos_quadrature(matvec, v: torch.Tensor, steps: int, max_basis: int | None = None, *,
                       reduce=None, dimension: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature of the spectral measure seen from ``v``: ``steps`` Lanczos steps give
    ``T``; its eigenvalues are the nodes and the squared first components of its eigenvectors
    the weights, so ``sum_j w_j f(theta_j) ~ v^T f(A) v / ||v||^2`` (exact for polynomials of
    degree < 2 steps).

    Only ``T``'s coefficients are needed, so the basis is kept only for re-orthogonalisation:
    ``max_basis`` = Lanczos vectors kept (the latest ones, in a ring), each new vector
    re-orthogonalised against them by two classical Gram-Schmidt passes. ``None`` (or
    ``>= steps``): all of them, full re-orthogonalisation (``steps + 1`` vectors in memory);
    ``2``: the plain three-term recurrence with local re-orthogonalisation (3 vectors,
    whatever ``steps``). Without full re-orthogonalisation the basis loses orthogonality once
    Ritz values converge, and converged eigenvalues reappear as "ghost" nodes that share
    their weight; the quadrature of smooth functions and the smoothed density are barely
    affected (measured against dense eigendecompositions in ``bench/RESULTS.md``, issue 16,
    section 4b).

    A product that is not finite (nan or inf) raises a ValueError. ``reduce`` and
    ``dimension``: for vectors split over the ranks, as in
    :func:`~catapult.curvature.lanczos.lanczos_top_eigenpair`.

    Example (the nodes of a 2x2 operator from 2 steps are its eigenvalues):
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> nodes, weights = lanczos_quadrature(lambda v: A @ v, torch.tensor([1.0, 0.0], dtype=torch.float64), 2)
        >>> nodes.round(6).tolist(), weights.round(6).tolist()
        ([1.0, 3.0], [0.5, 0.5])
        >>> lanczos_quadrature(lambda v: A @ v, torch.tensor([1.0, 0.0], dtype=torch.float64), 2,
        ...                    max_basis=2)[0].round(6).tolist()
        [1.0, 3.0]
    """
    n = v.numel()
    # int(steps) took True as one step, 3.5 and "3" as 3; 0 and -1 failed inside (IndexError)
    steps = check_integer("lanczos_quadrature", "steps", steps, high=MAX_PRODUCTS)
    steps = min(steps, n if dimension is None else check_integer("lanczos_quadrature", "dimension", dimension))
    max_basis = check_max_basis(max_basis, owner="lanczos_quadrature")
    kept = steps if max_basis is None else min(max_basis, steps)
    Q = v.new_zeros((kept, n))  # ring: q_j lives in row j % kept
    Q[0] = v / scaled_norm(v, reduce)
    T = np.zeros((steps, steps))
    m = steps
    scale = 0.0  # the largest ||A q_j|| so far: what an invariant remainder is small beside
    eps = torch.finfo(Q.dtype).eps
    invariant = min(1e3 * eps, math.sqrt(eps))   # (1e3 eps in float32 and float64)
    exponent, unscale = 0, 1.0   # the run is on 2**-exponent A (krylov.product_exponent, from the first product)
    for j in range(steps):
        w = matvec(Q[j % kept]).to(Q.dtype, copy=True)
        if j == 0:
            # squares of products below ~1e-154 (float64; 2**-63 float32) underflowed: beta = 0, one node
            # at the Rayleigh quotient, "invariant" (1e-200 A: 1 node for 12); past ~1e154 overflowed (a
            # ValueError "not finite" at 1e160). Exact powers of two: the same run, its nodes 2**exponent times
            exponent = product_exponent(w, reduce)
            unscale = math.ldexp(1.0, -exponent)
        if exponent:
            w.mul_(unscale)
        rows = Q[:min(j + 1, kept)]
        taken = 0.0
        for _ in range(2):
            h = rows @ w
            if reduce is not None:
                h = reduce(h)
            w.addmv_(rows.T, h, alpha=-1.0)
            taken += float(h @ h)
            if _ == 0:
                T[j, j] = float(h[j % kept])
        beta = float(vector_norm(w, reduce))
        scale = max(scale, math.sqrt(taken + beta * beta))  # ||A q_j||, by Pythagoras
        if not (math.isfinite(beta) and math.isfinite(T[j, j]) and math.isfinite(scale)):
            # numpy's eigh of a nan T fails with "Eigenvalues did not converge"
            raise ValueError(f"product {j + 1} of the Lanczos quadrature is not finite (a loss "
                             f"or curvature that is nan or inf: a diverged model?)")
        # relative to the products' size: against max(1, |alpha_j|) every remainder of an operator
        # with eigenvalues below ~1e3 eps (1e-13 in float64, 1e-4 in float32) was "invariant", and
        # each run ended after one step, a single node at its Rayleigh quotient; at most sqrt(eps): float16's
        # 1e3 eps is 0.98 (bfloat16's 7.8), and every float16 / bfloat16 run ended after one step
        if j + 1 == steps or beta <= invariant * scale:
            m = j + 1
            break
        T[j + 1, j] = T[j, j + 1] = beta
        Q[(j + 1) % kept] = w / beta
    nodes, vecs = np.linalg.eigh(T[:m, :m])
    if exponent:
        nodes = np.array([scaled_back(float(x), exponent) for x in nodes])
    return nodes, vecs[0] ** 2


@outside_inference_mode
@outside_autocast
@same_call_on_every_rank
def spectral_density(model, loss_fn, batch, *, runs: int = 8, steps: int = 40,
                     curvature: str = "hessian", optimizer=None, grid_points: int = 1000,
                     sigma: float | None = None, dtype=None, hvp: str = "auto", seed: int = 0,
                     chunk_size: int | None = None, max_basis: int | None = 2,
                     distributed: bool = False, scale_by_group_lr: bool = False) -> SpectralDensity:
    """Eigenvalue density of the Hessian (or Gauss-Newton, or pre-conditioned) by stochastic
    Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019): ``runs`` Rademacher vectors,
    :func:`lanczos_quadrature` of ``steps`` steps each, and the density
    ``phi(x) = (1/runs) sum_r sum_j w_rj N(x; theta_rj, sigma^2)`` on ``grid_points`` points
    spanning the nodes +- 3 sigma (default ``sigma`` = 1% of the nodes' range; ``sigma`` at most
    about 2.2e307, :func:`check_sigma`). The density integrates to ~1 over the grid (within 1%)
    where the grid's spacing is at most about ``sigma`` (the default ``sigma`` on >= 107 points); a
    coarser grid samples the Gaussians between their peaks, and a RuntimeWarning says so
    (:func:`warn_coarse_grid`) and how many points would do. Costs
    ``runs * min(steps, n)`` products (a run stops at the dimension ``n``), at most 10**5
    (:data:`catapult.arguments.MAX_PRODUCTS`, :func:`check_density_products`), on at most
    ``MAX_GRID_POINTS`` (10**6) grid points. Plot with :func:`catapult.plots.plot_spectral_density`.
    ``optimizer`` and ``scale_by_group_lr`` choose the pre-conditioned operator as in
    :func:`~catapult.curvature.spectrum.top_eigenpairs`.

    Memory: ``max_basis`` Lanczos vectors are kept for re-orthogonalisation (see
    :func:`lanczos_quadrature`; ``None`` = all ``steps``). The default, 2, is the three-term
    recurrence: 3 parameter-sized vectors whatever ``steps``, instead of ``steps + 1`` (41 by
    default: 330 MB for the 2.1M-parameter Fig. 1 FCN, ~16x its training step). On dense
    eigendecompositions of a small MLP (``bench/bench_slq.py``, ``bench/RESULTS.md`` issue 16,
    section 4b: 80 steps) the densities with 2, 5, 10, 20 vectors and with full
    re-orthogonalisation differ by <= 3e-7 (float64) and <= 4e-6 (float32) in L1, and the
    quadrature moments ``u^T H^p u`` (p <= 8) are as accurate (1e-14 / 6e-7 relative), while
    the sampling error of 8 vectors is ~3e-2: the bounded basis costs no measurable accuracy.
    What it changes is the nodes: converged outliers reappear as ghost copies sharing their
    weight (up to 6 copies of ``lambda_max`` at 80 steps in float32), so read eigenvalues from
    :func:`~catapult.curvature.spectrum.top_eigenpairs`, not from ``nodes``, or pass ``max_basis=None``.

    Raises a ValueError where the products are not finite (a nan or inf loss or curvature):
    there is no density to draw.

    Example (two eigenvalues, half the mass each):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> dens = spectral_density(model, torch.nn.MSELoss(), batch, runs=4, steps=2)
        >>> sorted(set(dens.nodes.round(4).ravel().tolist())), round(float(dens.weights.sum()) / 4, 6)
        ([1.0, 4.0], 1.0)
    """
    # runs and steps are counts of products (runs x min(steps, n) of them), bounded as a solver's max_iter is
    counts = [check_integer("spectral_density", label, value, low=low, high=high)
              for label, value, low, high in (("runs", runs, 1, MAX_PRODUCTS), ("steps", steps, 1, MAX_PRODUCTS),
                                              ("grid_points", grid_points, 2, MAX_GRID_POINTS))]
    width = None if sigma is None else check_sigma(sigma)
    (runs, steps, grid_points), sigma = counts, width
    max_basis = check_max_basis(max_basis, owner="spectral_density")
    if optimizer is not None:
        check_step_optimizer(optimizer, "spectral_density")
    op = curvature_operator(model, loss_fn, batch, curvature=curvature, optimizer=optimizer,
                            dtype=dtype, hvp=hvp, seed=seed, chunk_size=chunk_size,
                            distributed=distributed, scale_by_group_lr=scale_by_group_lr,
                            sharded_vectors="local")
    split = split_operator(op)
    # a run takes at most n steps (lanczos_quadrature stops at the dimension): what runs is capped,
    # not runs x steps (10**4 runs of steps=40 on a 2-parameter model were refused, 2 x 10**4 products)
    n = op.numel if split is None else split.dimension
    check_density_products(runs, steps, n)
    steps = min(steps, n)  # and the nodes padded to it: runs x steps of them could be 10**10
    gen = torch.Generator().manual_seed(int(seed))
    nodes, weights, spent = [], [], 0
    for _ in range(runs):
        v = rademacher_probe(split, op.numel, gen, op.dtype, op.device)
        t, w = lanczos_quadrature(op, v, steps, max_basis, **solver_split(op))
        spent += len(t)   # one product a Lanczos step
        pad = steps - len(t)  # an invariant subspace ends early: pad with zero-weight nodes
        nodes.append(np.concatenate([t, np.full(pad, t[-1])]))
        weights.append(np.concatenate([w, np.zeros(pad)]))
    nodes, weights = np.array(nodes), np.array(weights)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        # relative floors only: an absolute 1e-12 was 300x the 1% of the range of eigenvalues
        # c (1..4) at c = 1e-13, and drew their four peaks as one blob (1e-12 for a zero operator)
        sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi))) or 1e-12
    grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, int(grid_points))
    # the padded nodes (weight 0) add nothing: steps=10**6 on a small model made a grid x runs x
    # steps matrix of them (60 GiB, a MemoryError), though no more nodes than dimensions exist
    kept = weights.ravel() > 0
    centres, mass = nodes.ravel()[kept], weights.ravel()[kept]
    # in blocks of grid rows (about 2**22 entries of the grid x nodes matrix each): grid_points=10**6
    # beside 256 nodes was a 1.9 GiB matrix at once (10**9 a MemoryError after every product)
    rows = max(1, 2 ** 22 // max(1, centres.size))
    with np.errstate(over="ignore"):   # a distance of many sigma squared past the float range: exp(-inf) = 0
        density = np.concatenate([np.exp(-0.5 * ((grid[i:i + rows, None] - centres[None, :]) / sigma) ** 2) @ mass
                                  for i in range(0, grid.size, rows)]) / (runs * sigma * math.sqrt(2 * math.pi))
    warn_coarse_grid(grid, density, sigma)
    return SpectralDensity(grid, density, nodes, weights, float(sigma), spent)


#: The widest ``sigma`` :func:`spectral_density` takes: its grid's ends, the nodes +- 3 sigma, and
#: their distance are finite floats (``sigma=1e308`` gave a grid and a density of nan).
SIGMA_MAX = sys.float_info.max / 8
#: The narrowest: the density's peak, ``1 / (sigma sqrt(2 pi))``, is a finite float (``sigma=1e-310``
#: gave a density of inf).
SIGMA_MIN = 4 / sys.float_info.max / math.sqrt(2 * math.pi)


def check_sigma(sigma) -> float:
    """``sigma`` as a float; a ValueError naming it unless it is a finite number ``> 0`` whose grid
    ends and density peak are finite floats (``SIGMA_MIN <= sigma <= SIGMA_MAX``, about
    8.9e-309 and 2.2e307).

    >>> check_sigma(0.5)
    0.5
    >>> check_sigma(1e308)
    Traceback (most recent call last):
    ...
    ValueError: spectral_density sigma must be in [8.87676e-309, 2.24712e+307] (the density's peak 1 / (sigma sqrt(2 pi)) and its grid's ends, the nodes +- 3 sigma, must be finite floats); got 1e+308
    """
    width = check_real("spectral_density", "sigma", sigma, low=0.0, low_open=True)
    if not SIGMA_MIN <= width <= SIGMA_MAX:
        raise ValueError(f"spectral_density sigma must be in [{SIGMA_MIN:g}, {SIGMA_MAX:g}] (the density's peak "
                         f"1 / (sigma sqrt(2 pi)) and its grid's ends, the nodes +- 3 sigma, must be finite floats); "
                         f"got {width!r}")
    return width


def warn_coarse_grid(grid: np.ndarray, density: np.ndarray, sigma: float) -> None:
    """A RuntimeWarning where ``density`` on ``grid`` integrates (trapezoid rule) to more than 1%
    off 1, as :class:`SpectralDensity` promises it does: a grid whose spacing is wider than ``sigma``
    samples the Gaussians between their peaks (``sigma=1e-6`` on 1,000 points over a range of 2
    integrated to 0.36; the default ``sigma``, 1% of the range, on 10 points to 0.83). On a spacing
    of at most ``sigma`` the sum is within ``2 exp(-2 pi^2)`` (5e-9) of the integral over the line,
    and the grid's ends at +- 3 sigma cut off at most 0.27%.

    >>> grid = np.linspace(-3.0, 3.0, 7)     # spacing 1 = sigma: well sampled
    >>> warn_coarse_grid(grid, np.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi), 1.0)
    >>> import warnings
    >>> grid = np.linspace(-0.3, 0.3, 3)     # spacing 0.3 = 3 sigma
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_coarse_grid(grid, np.exp(-(grid / 0.1) ** 2 / 2) / (0.1 * math.sqrt(2 * math.pi)), 0.1)
    >>> print(caught[0].message)
    spectral_density: the density integrates to 1.21 over its grid, not ~1: the grid's spacing, 0.3, is 3 sigma (sigma = 0.1); pass grid_points >= 7
    """
    spacing = float(grid[1] - grid[0])
    total = spacing * (float(density.sum()) - (float(density[0]) + float(density[-1])) / 2)
    if abs(total - 1) > 0.01:
        # a spacing of at most sigma: span / (points - 1) <= sigma, span = the nodes' range + 6 sigma
        span, points = float(grid[-1] - grid[0]), grid.size
        ratio = span / sigma
        hints = [f"grid_points >= {math.ceil(ratio) + 1}"] if ratio < MAX_GRID_POINTS else []
        if points > 7:
            hints.append(f"sigma >= {(span - 6 * sigma) / (points - 7):.3g}")
        warnings.warn(f"spectral_density: the density integrates to {total:.3g} over its grid, not ~1: the grid's "
                      f"spacing, {spacing:.3g}, is {spacing / sigma:.3g} sigma (sigma = {sigma:.3g}); pass "
                      f"{' or '.join(hints) or 'more grid_points and a larger sigma'}", RuntimeWarning,
                      stacklevel=caller_stacklevel())
