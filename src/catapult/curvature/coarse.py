"""Coarse-to-fine start vectors: the top eigenvector of cheaper approximations of the Hessian.

A cold Lanczos solve spends most of its products turning a random vector into one that lives in
the Hessian's top (outlier) eigenspace. That work can be done on cheaper operators:

* **Sub-batches** (large batches): the Hessian of the loss on ``n/16`` samples already
  has nearly the same outlier eigenspace as on all ``n`` (its bulk differs, its outliers move by
  ``O(1/sqrt(m))``), and its products cost ``~1/16`` as much when per-sample compute dominates.
  The vector found there starts the solve on ``n/4`` samples, whose vector starts the
  full-batch solve.
* **Finite differences** (small batches, where a sub-batch costs nearly as much as the whole
  batch): the whole batch's Hessian with one-sided difference products
  (:meth:`~catapult.curvature.HessianOperator.forward_difference`: one gradient each, about half
  an exact product, relative error ~1e-3 in float32). Lanczos on it converges like on the exact
  Hessian down to near its error, so its vector leaves only the last few exact products.

Under ``coarse="auto"`` the finite-difference level comes first at every batch size (the sub-batch
levels of a large batch are its fallback, where its kink check skips it: ReLU in float32), and a
small batch has no sub-batch levels. A float32 model holding a kinked activation module, or whose
loss's graph goes through a kinked op (``F.relu``, ``clamp``, ``abs``...), starts at the sub-batch
levels (:func:`kink_guess`, called by ``sharpness``).

The final answer and its stopping test (``tol``) are those of the exact full-batch solve only: a
coarse level changes where Lanczos starts, never what it certifies.

Nothing here changes a model's parameters, gradients, buffers or train/eval mode, or the global
random number generators.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from catapult.arguments import as_integer, as_real
from catapult.curvature.hessian import HessianOperator
from catapult.curvature.krylov import product_exponent
from catapult.curvature.lanczos import lanczos_top_eigenpair
from catapult.curvature.microbatch import sample_count, sample_count_or_none, sample_index, shares_samples
from catapult.curvature.samples import block_rows, sample_leaves

__all__ = ["KINKED_ACTIVATIONS", "kink_seen", "kink_guess", "COARSE_MIN_SAMPLES", "COARSE_LEVELS", "SMALL_BATCH_LEVELS", "FINITE_DIFFERENCE",
           "FINITE_DIFFERENCE_COST", "FINITE_DIFFERENCE_MAX_ITER", "FINITE_DIFFERENCE_CONSISTENCY",
           "coarse_levels", "difference_consistency", "coarse_start_vector", "sub_batch"]

#: Batches with fewer samples (dim 0) get no sub-batch levels under ``coarse="auto"`` (they get
#: :data:`SMALL_BATCH_LEVELS`): products on a few samples cost nearly as much as on the whole
#: batch there (per-call overhead dominates), so a sub-batch solve costs more than it saves (the
#: small GPT of ``bench/bench_peers.py``).
COARSE_MIN_SAMPLES = 256
#: ``(divisor, tol)`` of each coarse level, coarsest first: the sub-batch is ``n // divisor``
#: samples spread over the batch (:func:`sub_batch`). Measured on the Fig. 1 FCN at n = 1000 (bench/RESULTS.md, issue 16).
COARSE_LEVELS = ((16, 3e-3), (4, 3e-3))
#: The level name of a solve on the whole batch with one-sided difference products.
FINITE_DIFFERENCE = "finite_difference"
#: ``coarse="auto"`` below :data:`COARSE_MIN_SAMPLES` samples (or without a sample count shared by inputs and targets): one
#: finite-difference level, to a residual of 3e-3: near the products' error (2e-3 relative on the
#: small GPT's top eigenvector in float32), it leaves 3 exact products there (tols 2e-3 .. 1e-2
#: measured, 2-5 exact products; bench/RESULTS.md, issue 16).
SMALL_BATCH_LEVELS = ((FINITE_DIFFERENCE, 3e-3),)
#: Activation modules with a kink (a jump in the first derivative): across them, float32 difference
#: products are skipped by the kink check, so ``coarse="auto"`` does not try the difference level
#: first on a float32 model holding one (:func:`kink_guess`).
KINKED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Hardswish,
                      nn.Hardsigmoid, nn.Threshold)
#: Full-batch-equivalent cost counted per difference product (one gradient vs a product's two
#: passes) in ``coarse_cost``.
FINITE_DIFFERENCE_COST = 0.5
#: Products a finite-difference level may spend: where the products' error keeps Lanczos above
#: the level's tol, its best vector so far is used.
FINITE_DIFFERENCE_MAX_ITER = 30
#: A finite-difference level is skipped when its forward and backward differences along the
#: start vector differ by more than this (relative): the loss is not smooth at the scale of the
#: step (ReLU kinks: measured 2e2 on a ReLU MLP, where the differences describe no Hessian),
#: while smooth losses differ by twice the truncation error (~1e-2 at most measured: tanh MLP,
#: small GPT).
FINITE_DIFFERENCE_CONSISTENCY = 0.1


def coarse_levels(batch, coarse, tol: float | None = None, *,
                  union_samples: int | None = None) -> list[tuple[int | str, float]]:
    """The ``(samples, tol)`` of the coarse solves for ``batch`` under ``coarse``, with
    ``samples`` = :data:`FINITE_DIFFERENCE` for a finite-difference level on the whole batch.

    ``coarse`` is ``None`` (none), ``"auto"`` (:data:`SMALL_BATCH_LEVELS` then
    :data:`COARSE_LEVELS` when the batch's inputs and targets share a sample dimension of at least
    :data:`COARSE_MIN_SAMPLES`, else :data:`SMALL_BATCH_LEVELS` alone: the finite-difference level
    first, its sub-batch levels only where it is skipped, :func:`coarse_start_vector`; tensors, or tuples, lists and dicts of tensors sharing dim 0, as an
    HF-style ``{"input_ids", "attention_mask"}``: :func:`~catapult.curvature.microbatch.sample_count`) or a sequence of ``(divisor, tol)`` pairs (one pair alone is one
    level), where ``divisor`` is
    an integer >= 2 (``n // divisor`` samples, :func:`sub_batch`) or :data:`FINITE_DIFFERENCE`.

    ``tol``, the whole solve's tolerance: under ``"auto"`` no level stops finer than it needs to,
    at the larger of its own tol and ``tol`` (a start vector much better than the answer is asked
    to be only costs products: at tol 1e-2 and 3e-2, 11-28% less CPU time, bench/RESULTS.md,
    issue 16, 1b). Levels given explicitly keep their tols.

    ``union_samples`` (``distributed=True``: the union's sample count over the ranks, or None
    where some rank's batch has none): ``"auto"`` chooses by it, so that every rank runs the same
    levels; each level's ``n // divisor`` is still this batch's (the rank's shard's).

    >>> x, y = torch.zeros(1000, 3), torch.zeros(1000)
    >>> coarse_levels((x, y), "auto"), coarse_levels((x[:100], y[:100]), "auto")
    ([('finite_difference', 0.003), (62, 0.003), (250, 0.003)], [('finite_difference', 0.003)])
    >>> coarse_levels((x, y), "auto", tol=1e-2)
    [('finite_difference', 0.01), (62, 0.01), (250, 0.01)]
    >>> coarse_levels(({"input_ids": x, "attention_mask": x}, {"labels": y}), "auto")[1:]
    [(62, 0.003), (250, 0.003)]
    >>> coarse_levels((x[:160], y[:160]), "auto", union_samples=320)[1:]   # a rank's shard of 160
    [(10, 0.003), (40, 0.003)]
    """
    if coarse is None:
        return []
    inputs, targets = batch
    n = sample_count_or_none(inputs)   # a nested batch's too (a dict batch got no sub-batch levels)
    if n is not None and not shares_samples(targets, n):   # (targets=None, labels in the inputs: whole)
        n = None
    # a block-sparse (BSR, BSC) leaf is cut by whole blocks of rows (sparse batches of other
    # layouts are cut by any rows: samples.sparse_rows)
    block = math.lcm(1, *(block_rows(t) for part in batch for _, t in sample_leaves(part)))
    if isinstance(coarse, str):
        if coarse != "auto":
            raise ValueError(f"coarse must be 'auto', None or (divisor, tol) pairs, got {coarse!r}")
        if n is not None and any(max(1, n // divisor) % block for divisor, _ in COARSE_LEVELS):
            n = None   # sub-batches it cannot cut: the finite-difference level on the whole batch
        chooser = n if union_samples is None else union_samples
        # the difference level first: its sub-batch levels run only where its kink check skips it
        coarse = SMALL_BATCH_LEVELS + COARSE_LEVELS if n is not None and chooser >= COARSE_MIN_SAMPLES else SMALL_BATCH_LEVELS
        coarse = [(divisor, max(level_tol, tol or 0.0)) for divisor, level_tol in coarse]
    if not isinstance(coarse, (tuple, list)):  # coarse=2 failed inside: "'int' object is not iterable"
        raise ValueError(f"coarse must be 'auto', None or (divisor, tol) pairs, got {coarse!r}")
    if (isinstance(coarse, tuple) and len(coarse) == 2 and as_real(coarse[1]) is not None
            and (isinstance(coarse[0], str) or as_integer(coarse[0]) is not None)):
        coarse = [coarse]  # one level given as a bare pair
    levels: list[tuple[int | str, float]] = []
    for level in coarse:
        if not (isinstance(level, (tuple, list)) and len(level) == 2):
            raise ValueError(f"coarse levels must be (divisor, tol) pairs, got {level!r}")
        divisor, level_tol = level
        real_tol, count = as_real(level_tol), as_integer(divisor)
        if real_tol is None or not real_tol > 0:
            raise ValueError(f"coarse levels need a tol > 0, got {(divisor, level_tol)!r}")
        if isinstance(divisor, str) and divisor == FINITE_DIFFERENCE:
            levels.append((FINITE_DIFFERENCE, real_tol))
            continue
        if count is None or count < 2:
            raise ValueError(f"coarse levels must be (divisor >= 2, tol > 0) or "
                             f"('{FINITE_DIFFERENCE}', tol) pairs, got {(divisor, level_tol)!r}")
        if n is None:
            raise ValueError("coarse sub-batch levels need the batch's inputs and targets to hold "
                             "tensors with a common sample dimension (dim 0)")
        if max(1, n // count) % block:
            raise ValueError(f"coarse level {(divisor, level_tol)!r}: its {max(1, n // count)} samples cut a block-sparse "
                             f"batch (blocks of {block} rows) inside a block; use coarse levels whose sub-batches "
                             f"are whole blocks, coarse='auto' or coarse=None")
        levels.append((max(1, n // count), real_tol))
    return levels


def sub_batch(inputs, targets, m: int):
    """``m`` of the batch's samples, every ``(n // m)``-th from the first (of every tensor with a
    sample dimension of nested inputs and targets: :func:`~catapult.curvature.microbatch.sample_index`): spread over a batch
    sorted by class or by source, rather than its first ``m`` (which may lack the directions of
    the top eigenvector altogether: the full solve then starts orthogonal to it and certifies
    another eigenvalue; a linear model whose first half of samples uses features 0-1 and second
    half 2-3 gave 1.01, "converged", for a top eigenvalue of 9.07).

    >>> x = torch.arange(10.0).unsqueeze(1)
    >>> sub_batch(x, x.squeeze(1), 3)[1]
    tensor([0., 3., 6.])
    >>> sub_batch({"ids": x, "flag": True}, x, 3)[0]["ids"].squeeze(1)
    tensor([0., 3., 6.])
    """
    stride = sample_count(inputs, option="coarse") // m
    rows = slice(0, stride * m, stride)   # the rows of t[::stride][:m]
    return sample_index(inputs, rows), sample_index(targets, rows)


def difference_consistency(op, v: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(gap, forward)``: the relative gap ``||F+ - F-|| / ||(F+ + F-) / 2||`` between the
    forward and backward differences ``F+ = (g(theta + h u) - g(theta)) / h`` and
    ``F- = (g(theta) - g(theta - h u)) / h`` along ``u = v / ||v||``, and ``F+`` (scaled by
    ``||v||``, as :meth:`~catapult.curvature.HessianOperator.forward_difference` returns it).
    For a smooth loss the gap is ``~ h ||D^3 L[u, u]|| / ||H u||`` (small); across kinks it is
    large. Two gradients.

    Example (a quadratic: no gap):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> op = HessianOperator(model, torch.nn.MSELoss(), batch, dtype=torch.float64)
        >>> gap, forward = difference_consistency(op, torch.tensor([1.0, 1.0], dtype=torch.float64))
        >>> gap < 1e-6, forward.round(decimals=5)
        (True, tensor([4., 1.], dtype=torch.float64))
    """
    forward = op.forward_difference(v)
    backward = op.forward_difference(-v).neg_()
    # the norms of 2**-e F (a ratio: exact); a loss scaled by 2**531 overflowed them (nan: the
    # level skipped, 15 products for 10); one scaled by 1e-200 underflowed them to 0 and 0, read
    # as no gap (a kinked loss passed the check)
    unscale = math.ldexp(1.0, -max(product_exponent(forward), product_exponent(backward)))
    mean = float(torch.linalg.vector_norm((forward + backward).mul_(unscale))) / 2
    gap = float(torch.linalg.vector_norm((forward - backward).mul_(unscale)))
    if not (math.isfinite(gap) and math.isfinite(mean)):
        return float("nan"), forward
    return (gap / mean if mean > 0 else (0.0 if gap == 0 else float("inf"))), forward


def coarse_start_vector(model, loss_fn, batch, v0: torch.Tensor, levels, *, dtype=None,
                        hvp: str = "auto", seed: int = 0, max_basis: int = 20,
                        max_iter: int = 100, op=None, operator_options: dict | None = None,
                        solve=None, sub_operator=None) -> tuple[torch.Tensor, int, float]:
    """``(vector, products, cost)``: ``v0`` carried through the top-eigenvector solves of each
    level (``levels`` from :func:`coarse_levels`), in order: on ``m`` samples (:func:`sub_batch`), or on the
    whole batch with difference products (``op``, the whole batch's
    :class:`~catapult.curvature.HessianOperator`, built here when not given; its gradient is
    the differences' base point).

    Levels run plain Lanczos (``reorthogonalize=False``): a start vector needs no orthogonal
    basis, and a sub-batch product is cheap next to a Gram-Schmidt pass over the full-size
    basis (Fig. 1 FCN: the same products and answers, 7-9% less time; the two GPTs: the same
    product counts, one fewer on one seed; bench/RESULTS.md, issue 16, 1d).
    A sub-batch level's vector is used when its solve converged; a finite-difference level's
    whenever it is finite (after at most :data:`FINITE_DIFFERENCE_MAX_ITER` products). A
    finite-difference level first checks :func:`difference_consistency` along its start vector
    (one extra gradient; its forward difference is the solve's first product) and is skipped
    when the gap exceeds :data:`FINITE_DIFFERENCE_CONSISTENCY` (a non-smooth loss). Sub-batch
    levels after a finite-difference level that ran are skipped: its vector is already the whole
    batch's, and they are its fallback where it is skipped (``coarse="auto"`` on 256 samples or
    more; trying it first cost 0.54-0.80x of the sub-batch levels' CPU on a GPT, a tanh CNN and a
    float64 ReLU MLP, 1.10x on a float32 ReLU MLP, where it is skipped: ``bench/RESULTS.md``).
    ``products`` counts the levels' products; ``cost`` weighs each by its level's ``m / n``, or
    :data:`FINITE_DIFFERENCE_COST` for a difference product (full-batch-equivalent products).
    ``operator_options`` are further :class:`HessianOperator` arguments for the sub-batch
    operators (``memory="lean"``: its micro-batches, no retained graph); ``solve(op, v, tol=,
    max_iter=)`` replaces their solver (``memory="lean"``:
    :func:`catapult.curvature.lean.lean_top_eigenpair`). ``sub_operator(sub_batch, m)``, where
    given, builds a sub-batch level's operator and returns it with the level's share of the whole
    batch's samples (``distributed=True``: the union of the ranks' sub-batches,
    :func:`catapult.curvature.coarse_ranks.sub_batch_operator`); ``op`` then takes
    ``forward_difference`` all the same.

    Example (one level on samples 0 and 2 of 4, which already hold the top direction):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
        >>> v, products, cost = coarse_start_vector(model, torch.nn.MSELoss(), (x, torch.zeros(4, 1)),
        ...                                         torch.ones(2), [(2, 1e-6)])
        >>> v.abs().round(decimals=4), products, cost
        (tensor([1., 0.]), 2, 1.0)
    """
    inputs, targets = batch
    vector, products, cost = v0, 0, 0.0
    difference_ran = False
    for m, tol in levels:
        if m != FINITE_DIFFERENCE and difference_ran:
            continue   # the whole batch's vector already: sub-batch levels are the difference level's fallback
        if m == FINITE_DIFFERENCE:
            if op is None:
                op = HessianOperator(model, loss_fn, batch, dtype=dtype, hvp=hvp, seed=seed,
                                     **(operator_options or {}))
            start = vector.to(device=op.device, dtype=op.dtype)
            start = start / torch.linalg.vector_norm(start)
            gap, first = difference_consistency(op, start)
            products += 1  # the backward difference; the forward one is the solve's first product
            cost += FINITE_DIFFERENCE_COST
            if not gap <= FINITE_DIFFERENCE_CONSISTENCY:
                products += 1
                cost += FINITE_DIFFERENCE_COST
                continue
            cached = [first]

            def product(u, cached=cached, op=op):
                return cached.pop() if cached else op.forward_difference(u)

            est = lanczos_top_eigenpair(product, start, tol=tol,
                                        max_iter=min(max_iter, FINITE_DIFFERENCE_MAX_ITER),
                                        max_basis=max_basis, reorthogonalize=False,
                                        _fresh_output=True)
            products += est.matvecs
            cost += est.matvecs * FINITE_DIFFERENCE_COST
            if est.vector.isfinite().all() and math.isfinite(est.value):
                vector, difference_ran = est.vector, True
            continue
        if sub_operator is not None:
            sub, share = sub_operator(sub_batch(inputs, targets, m), m)
        else:
            sub = HessianOperator(model, loss_fn, sub_batch(inputs, targets, m), dtype=dtype, hvp=hvp,
                                  seed=seed, **(operator_options or {}))
            share = m / sample_count(inputs, option="coarse")
        if solve is not None:
            est = solve(sub, vector, tol=tol, max_iter=max_iter)
        else:
            est = lanczos_top_eigenpair(sub, vector, tol=tol, max_iter=max_iter,
                                        max_basis=max_basis, reorthogonalize=False,
                                        _fresh_output=True)
        products += est.matvecs
        cost += est.matvecs * share
        if est.vector.isfinite().all() and est.converged:
            vector = est.vector
    return vector, products, cost


def kink_seen(model, dtype, graph: bool = False) -> bool:
    """Whether ``coarse="auto"`` guesses ``model``'s loss kinked at the difference step in
    ``dtype``: narrower than float64, and the model (None: none to scan) holds a :data:`KINKED_ACTIVATIONS` module or
    ``graph`` (the operator's ``kinked``: its loss's graph, walked once at its build, goes through a
    kinked op, ``F.relu`` or ``clamp`` called in a forward: :data:`~catapult.curvature.twice.KINKED_NODES`).

    >>> kink_seen(nn.ReLU(), torch.float32), kink_seen(nn.Tanh(), torch.float32), kink_seen(nn.Tanh(), torch.float32, True)
    (True, False, True)
    >>> kink_seen(nn.ReLU(), torch.float64, True)
    False
    """
    return dtype != torch.float64 and (bool(graph) or (model is not None and any(
        isinstance(module, KINKED_ACTIVATIONS) for module in model.modules())))


def kink_guess(levels, model, dtype, graph: bool = False) -> list:
    """``coarse="auto"``'s levels for ``model`` measured in ``dtype``: without the leading
    finite-difference level where :func:`kink_seen` (a kinked activation module, or ``graph``: a
    kinked op in the loss's graph, ``F.relu`` included) and sub-batch levels follow, since that
    level's kink check would skip it after two gradients (+15% of a call on issue 16's float32 ReLU
    FCN, bench/RESULTS.md); else ``levels`` as they are. A guess: a wrong one costs the difference
    level's saving, never accuracy (the exact solve certifies the answer).

    Example:
        >>> levels = [(FINITE_DIFFERENCE, 3e-3), (16, 3e-3), (4, 3e-3)]
        >>> relu = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> kink_guess(levels, relu, torch.float32)
        [(16, 0.003), (4, 0.003)]
        >>> kink_guess(levels, relu, torch.float64)[0][0], kink_guess(levels, nn.Tanh(), torch.float32)[0][0]
        ('finite_difference', 'finite_difference')
        >>> kink_guess(levels, nn.Tanh(), torch.float32, graph=True)   # F.relu in its forward
        [(16, 0.003), (4, 0.003)]
    """
    levels = list(levels)
    if len(levels) < 2 or levels[0][0] != FINITE_DIFFERENCE or not kink_seen(model, dtype, graph):
        return levels
    return levels[1:]
