"""``memory="lean"``: curvature within 3x a training step's peak memory (issue 16).

Two parts:

* **the top eigenpair** (:func:`catapult.sharpness`, :func:`catapult.preconditioned_sharpness`)
  by :func:`lean_top_eigenpair`, a Lanczos solver that keeps no Krylov basis (three
  parameter-sized vectors), on a :class:`~catapult.curvature.HessianOperator` that keeps no
  gradient graph between products (``retain_graph=False``), adds each product into the
  solver's vector in place (:meth:`~catapult.curvature.HessianOperator.accumulate`) and runs
  over ``m`` micro-batches sized below. Peak ``~4 P + 2.6 A / m'`` (``P`` one parameter-sized
  vector, ``A`` the training step's saved activations); measured 1.0-2.8x a training step on
  the Fig. 1 FCN (``bench/RESULTS.md``, issue 16, section 3c).
* **the top-k and the thick-restart solver** (:func:`catapult.top_eigenpairs`, or an explicit
  ``max_basis``) keep a basis, sized by :func:`lean_sizes` from the memory model below; the
  top-k at least :func:`~catapult.curvature.top_k.restart_floor` vectors (``3 k + block``: a
  basis near ``k`` restarts after every product and rarely converges), beyond that budget where
  it is smaller.

Memory model of the basis solvers (bytes above the set-up state, which already holds the model
and the batch):

* training step: ``T = P + A + L`` -- the gradients (``P``), the activations autograd saves for
  one forward/backward on the whole batch (``A``) and, during backward, the gradient of the
  largest saved activation (``L``);
* lean solve with a basis: ``(B + C) P + k A / m'`` -- ``B`` Krylov vectors, ``C = 8`` further
  parameter-sized vectors (the HVP's output, the chunk's gradient and its graph, the start and
  Ritz vectors, restart work space) and the HVP's working memory, ``k = 2.6`` times the
  activations of one micro-batch of ``m`` (``m' = min(m, 4)`` for batches of >= 256 samples,
  whose coarse start solves on an unchunked quarter of the batch). ``C`` and ``k`` are fit
  to the Fig. 1 FCN's measured peaks (``bench/RESULTS.md``, issue 16), ``C`` to the largest
  value seen (basis 3, many restarts).

``A`` and ``L`` are estimated by :func:`activation_bytes`: one forward on a few samples, counting
the bytes of the tensors autograd saves for backward (not the parameters or the batch, which the
set-up state holds), scaled to the batch.
"""
from __future__ import annotations

import math
import warnings

import torch

from catapult.arguments import MAX_PRODUCTS, caller_stacklevel, check_integer, check_real, check_seed
from catapult.curvature.coarse import COARSE_MIN_SAMPLES
from catapult.curvature.rng import fixed_rng
from catapult.curvature.krylov import (inner_product, product_exponent, scaled_back, scaled_norm, vector_norm,
                                       unit_roundoff)
from catapult.curvature.microbatch import (batch_coupling, coupling_remedy, sample_count, sample_count_or_none, sample_rows,
                                           tensor_leaves)
from catapult.curvature.samples import block_rows, sample_leaves
from catapult.curvature.stateless import AttributesKept, functional_call
from catapult.curvature.lanczos import EigenEstimate, tridiagonal_top_pair
from catapult.curvature.stopping import error_floor, relative_residual, rounding_level

__all__ = ["lean_sizes", "activation_bytes", "LEAN_RATIO", "LEAN_MIN_BASIS", "LEAN_MAX_BASIS",
           "LEAN_OVERHEAD_VECTORS", "LEAN_HVP_ACTIVATIONS", "LEAN_MIN_CHUNK_BYTES", "lean_top_eigenpair",
           "refuse_batch_coupling", "strided_parts", "chunk_rows"]

#: The promise: predicted peak <= LEAN_RATIO x a training step's.
LEAN_RATIO = 3
#: Basis bounds: 3 is the least a thick restart keeps useful; 10 was lean's fixed size (more
#: vectors save few products once the solve converges in a handful of them).
LEAN_MIN_BASIS, LEAN_MAX_BASIS = 3, 10
#: Parameter-sized vectors besides the basis, and the HVP's working memory in activations of
#: one micro-batch (both fit to the Fig. 1 FCN's measured peaks).
LEAN_OVERHEAD_VECTORS, LEAN_HVP_ACTIVATIONS = 8, 2.6
#: A micro-batch's activations are never cut below this (1 MiB; the whole batch where its
#: activations are less): on a small model the relative rule alone (``A / m <= P / 2``) cut a
#: batch of 64 into micro-batches of 2 (a 50-parameter MLP: ~100 forwards a product, ~1 s a solve
#: for kilobytes saved). The most it adds to a solve's peak is the HVP working memory of one such
#: micro-batch, ``2.6 x 1 MiB``, below the ~9 MB of allocator and runtime overhead a process
#: already has (``bench/RESULTS.md``, issue 16, 3c); on the Fig. 1 FCN, where 3x was measured,
#: ``P / 2 = 4 MiB`` is above it and the sizes are unchanged.
LEAN_MIN_CHUNK_BYTES = 2 ** 20


def lean_sizes(param_bytes: int, act_bytes: int, largest_bytes: int,
               n: int) -> tuple[int, int, bool]:
    """``(chunks, max_basis, fits)`` of ``memory="lean"`` for ``P = param_bytes`` (one
    parameter-sized vector), ``A = act_bytes`` (a training step's saved activations on the
    batch), ``L = largest_bytes`` (the largest one of them) and ``n`` samples.

    * ``chunks m``: the smallest power of two with ``A / m <= max(P / 2, F)``, at most ``n``,
      where ``F`` = :data:`LEAN_MIN_CHUNK_BYTES` (1 MiB): activations of a micro-batch are not
      cut below ``F`` (one chunk where ``A <= F``);
    * ``max_basis B = min(10, floor((3 (P + A + L) - 8 P - ceil(2.6 A / m')) / P))`` with
      ``m'`` from the relative rule alone (``m_r``, the smallest power of two with
      ``A / m_r <= P / 2``): ``min(m_r, 4)`` when ``n >= 256`` (the coarse start's unchunked
      quarter) else ``m_r``: the largest basis whose predicted peak ``(B + 8) P + 2.6 A / m'``
      is ``<= 3 x`` the step's ``P + A + L``; the floor ``F`` adds at most ``2.6 F`` bytes
      to that peak (memory not worth hundreds of products), and leaves ``B`` as it was;
    * if that ``B < 3``, 3x cannot be met (small batches: the step is little more than one
      gradient while the solver needs >= 11 parameter-sized vectors): ``fits = False`` and
      ``B = 3``, the minimum (the caller warns).

    >>> # m = 8 (A/8 = 0.46 P), m' = 4: floor(17.7 - 8 - 2.405) = 7
    >>> lean_sizes(8_000_000, 29_600_000, 9_600_000, 5000)   # P = 8 MB, A = 3.7 P, L = 1.2 P
    (8, 7, True)
    >>> # m = 4: floor(10.2 - 8 - 1.17) = 1 < 3
    >>> lean_sizes(8_000_000, 14_400_000, 4_800_000, 2500)   # A = 1.8 P, L = 0.6 P
    (4, 3, False)
    >>> # a 50-parameter model, 64 samples: 4 kB of activations are one chunk (m_r = 64)
    >>> lean_sizes(200, 4096, 1536, 64)
    (1, 10, True)
    """
    P, A, L, n = int(param_bytes), int(act_bytes), int(largest_bytes), max(1, int(n))

    def chunks(per_chunk: float) -> int:  # the smallest power of two with A / m <= per_chunk, at most n
        m = 1
        while A > m * per_chunk and m < n:
            m *= 2
        return min(m, n)

    m_relative = chunks(P / 2)
    m = chunks(max(P / 2, LEAN_MIN_CHUNK_BYTES))
    m_eff = min(m_relative, 4) if n >= COARSE_MIN_SAMPLES else m_relative
    hvp_bytes = math.ceil(LEAN_HVP_ACTIVATIONS * A / m_eff)
    basis = (LEAN_RATIO * (P + A + L) - LEAN_OVERHEAD_VECTORS * P - hvp_bytes) // P
    if basis < LEAN_MIN_BASIS:
        return m, LEAN_MIN_BASIS, False
    return m, int(min(LEAN_MAX_BASIS, basis)), True


def activation_bytes(model: torch.nn.Module, loss_fn, batch, *, probe: int = 8,
                     seed: int = 0) -> tuple[int, int]:
    """``(total, largest)``: bytes autograd saves for backward in one forward + loss on the whole
    batch, and those of the largest saved tensor, estimated from the first ``probe`` samples and
    scaled by ``n / probe``. Tensors sharing storage with the
    parameters, buffers or the batch are not counted (the set-up state holds them already); a
    tensor saved twice counts once. The model's parameters, buffers (cloned, as in
    :class:`~catapult.curvature.HessianOperator`), mode, a state its forward carries in a plain attribute
    (:class:`~catapult.curvature.stateless.AttributesKept`) and the global RNG are left untouched.

    >>> model = torch.nn.Linear(2, 1, bias=False)   # MSE saves the output: 4 bytes a sample
    >>> activation_bytes(model, torch.nn.MSELoss(), (torch.zeros(10, 2), torch.zeros(10, 1)))
    (40, 40)
    """
    # int(probe) made 2.5 and "3" probes of 2 and 3 samples, 0 and -1 one, silently; seed=1.5 failed in torch
    probe = check_integer("activation_bytes", "probe", probe)
    seed = check_seed("activation_bytes", "seed", seed, optional=False)
    inputs, targets = batch
    n = sample_count(inputs)  # a tensor, or tuples / lists / dicts of tensors sharing dim 0
    k = chunk_rows(max(1, min(probe, n)), batch)   # a block-sparse batch's whole blocks
    x, y = sample_rows(inputs, 0, k), sample_rows(targets, 0, k) if sample_count_or_none(targets) == n else targets
    params = {name: p.detach().requires_grad_(p.requires_grad) for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    held = {t.untyped_storage().data_ptr() for t in [*params.values(), *buffers.values()]}
    # the batch, and the probe's rows (a sparse batch's are copies: samples.sparse_rows), by their
    # strided parts (a sparse tensor has no storage of its own: "Cannot access storage of SparseTensorImpl")
    held |= {part.untyped_storage().data_ptr() for t in tensor_leaves((inputs, targets, x, y))
             for part in strided_parts(t)}
    seen: dict = {}

    def pack(t):
        for part in strided_parts(t) if torch.is_tensor(t) else ():
            if part.untyped_storage().data_ptr() not in held:
                key = (part.untyped_storage().data_ptr(), part.storage_offset(), tuple(part.shape))
                seen[key] = part.numel() * part.element_size()
        return t

    # (a state the forward carries in a plain attribute is put back: memory='lean' measured one batch on)
    device = next(t.device for t in tensor_leaves(x))
    with torch.enable_grad(), fixed_rng(seed, device), AttributesKept().watch(model), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(functional_call(model, {**params, **buffers}, (x,)), y)
    scale = n / k
    return int(round(sum(seen.values()) * scale)), int(round(max(seen.values(), default=0) * scale))


def strided_parts(t: torch.Tensor) -> list[torch.Tensor]:
    """The strided tensors holding ``t``'s values: ``t`` itself, or a sparse tensor's index and
    value tensors (COO; CSR, CSC, BSR, BSC), whose storages :func:`activation_bytes` counts.

    >>> [p.tolist() for p in strided_parts(torch.tensor([[0.0, 2.0]]).to_sparse_csr())]
    [[0, 1], [1], [2.0]]
    """
    if t.layout == torch.strided:
        return [t]
    if t.layout == torch.sparse_coo:
        return [t._indices(), t._values()]
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return [t.crow_indices(), t.col_indices(), t.values()]
    return [t.ccol_indices(), t.row_indices(), t.values()]


def chunk_rows(rows: int, batch) -> int:
    """``rows`` samples rounded up to whole blocks of a block-sparse (BSR, BSC) leaf of ``batch``'s
    inputs or targets (:func:`~catapult.curvature.samples.block_rows`), at most the batch's samples:
    the micro-batches ``memory="lean"`` chooses, and its sizing probe, cut no block.

    >>> x = torch.eye(8)
    >>> chunk_rows(3, (x.to_sparse_bsr((2, 2)), x)), chunk_rows(3, (x, x)), chunk_rows(7, (x.to_sparse_bsr((4, 4)), x))
    (4, 3, 8)
    """
    block = math.lcm(1, *(block_rows(t) for part in batch for _, t in sample_leaves(part)))
    rows = -(-int(rows) // block) * block
    n = sample_count_or_none(batch[0])
    return rows if n is None else min(rows, n)


def refuse_batch_coupling(model: torch.nn.Module, chunk_size: int) -> None:
    """Raise a ValueError naming the first module whose train-mode forward couples a batch's
    samples (BatchNorm statistics, a dropout mask), which micro-batches of ``chunk_size`` (the
    ones ``memory="lean"`` chose) would see differently.

    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    >>> refuse_batch_coupling(model.eval(), 4)
    >>> refuse_batch_coupling(model.train(), 4)
    Traceback (most recent call last):
    ...
    ValueError: memory='lean' splits the batch into micro-batches of 4, but module '1' is a Dropout in train mode, whose mask would differ per micro-batch; call model.eval() or use memory='fast'
    """
    coupled = batch_coupling(model)
    if coupled is not None:
        raise ValueError(f"memory='lean' splits the batch into micro-batches of {chunk_size}, but "
                         f"module {coupled[0]!r} is {coupled[1]} would differ per micro-batch; "
                         f"{coupling_remedy(model.get_submodule(coupled[0]))}use memory='fast'")


def warn_unfit(n: int, param_bytes: int, act_bytes: int, basis: int = LEAN_MIN_BASIS) -> None:
    """The warning of a lean solve that cannot stay within 3x a training step, naming the ``basis``
    it uses (the minimum, or a top-k solve's restart floor above it), at the caller's line (a fixed
    ``stacklevel=4`` named a line of catapult's, ``spectrum.py`` or ``sharpness.py``, so the default
    filter showed it once per process; and top_eigenpairs' restart floor of 62 vectors (k=26) was "the
    minimum basis of 3").

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_unfit(8, 2 ** 20, 2 ** 21, basis=16)
    >>> str(caught[0].message).endswith("using a basis of 16")
    True
    """
    warnings.warn(
        f"memory='lean': {LEAN_RATIO}x a training step's peak memory cannot be met for this batch "
        f"({n} samples, activations {act_bytes / 2**20:.1f} MiB vs parameters "
        f"{param_bytes / 2**20:.1f} MiB: the solver needs >= {LEAN_MIN_BASIS + LEAN_OVERHEAD_VECTORS} "
        f"parameter-sized vectors; predicted by catapult.curvature.lean.lean_sizes); using a basis of "
        f"{max(basis, LEAN_MIN_BASIS)}", RuntimeWarning, stacklevel=caller_stacklevel())


def _apply(matvec, v: torch.Tensor, out: torch.Tensor) -> None:
    """``out += A v``, in place through ``matvec.accumulate`` where the operator has it."""
    accumulate = getattr(matvec, "accumulate", None)
    if accumulate is not None:
        accumulate(v, out)
    else:
        out.add_(matvec(v).to(out.dtype))


#: A cycle of :func:`lean_top_eigenpair` whose residual is within this many rounding floors
#: (:func:`~catapult.curvature.stopping.error_floor`) and fell by less than half is the last: the
#: residual a dtype computes stalls there (tanh / GELU MLPs in float32 asked for tol 1e-8 ran
#: cycles to ``max_iter``, 300 products, for a bound that stayed at the floor).
STALL_FLOORS = 100.0


def lean_top_eigenpair(matvec, v0: torch.Tensor, *, tol: float = 1e-3, max_iter: int = 100,
                       overwrite: bool = False, reduce=None, dimension: int | None = None) -> EigenEstimate:
    """Top (algebraic) eigenpair of a symmetric operator holding three vectors of ``v0``'s size
    and no Krylov basis: ``memory="lean"``'s solver.

    A cycle runs Lanczos's three-term recurrence twice from the same unit start ``q_0``:

    1. **coefficients**: ``w = A q_j - beta_{j-1} q_{j-1}`` is built in the buffer that held
       ``q_{j-1}`` (an operator with ``accumulate(v, out)``, such as
       :meth:`~catapult.curvature.HessianOperator.accumulate`, adds ``A q_j`` into it without
       a temporary), then ``alpha_j q_j`` is removed (twice, against rounding) and
       ``q_{j+1} = w / beta_j``. Only ``alpha_j, beta_j`` are kept (the tridiagonal ``T_m``);
       it stops when the top Ritz pair ``(theta, s)`` of ``T_m`` has
       ``|beta_m s_m| / |theta| <= tol``, the space is invariant, or the products left would
       not pay for the second pass;
    2. **Ritz vector**: the same recurrence with the stored coefficients rebuilds
       ``q_0 .. q_{m-1}`` and accumulates ``y = sum_j s_j q_j`` (``m - 1`` products);
    3. **check**: one product ``A y``; the value is the Rayleigh quotient ``y^T A y`` of the
       unit ``y`` and the residual ``||A y - theta y|| / |theta|`` is the one actually
       certified (``converged`` when ``<= tol``). Without re-orthogonalisation the basis loses
       orthogonality once a Ritz value converges, so the recurrence's residual estimate can be
       optimistic; the check catches that, and the next cycle starts from ``y``.

    Held: ``q_0``, ``q_j``, ``w`` in pass 1; ``q_j``, ``w``, ``y`` in pass 2 (``q_0``'s buffer
    is reused). ``overwrite=True`` makes ``v0`` itself that buffer, and the returned vector is
    written back into it (``est.vector is v0``), so a caller that holds its start vector pays
    nothing extra for it; otherwise ``v0`` is copied first. A cycle costs ``2 m`` products for
    ``m`` Lanczos steps, about twice :func:`~catapult.curvature.lanczos_top_eigenpair`'s, in
    exchange for its basis of up to ``max_basis`` vectors. ``error_bound`` = ``residual`` (the
    residual bound), or the rounding floor where that is larger
    (:func:`~catapult.curvature.stopping.error_floor` of the spectrum pass 1 saw): ``converged``
    is ``error_bound <= tol``. ``max_iter`` (>= 2) counts every product of every pass.
    ``reduce`` and ``dimension``: vectors split over ranks, as in :func:`~catapult.curvature.lanczos_top_eigenpair`.
    An operator of tiny or huge scale is solved as ``2**-e A``, as there (each product then
    goes through one temporary vector).

    Example (the largest *algebraic* eigenvalue, 3):
        >>> A = torch.diag(torch.tensor([3.0, 1.0, -5.0, 0.5], dtype=torch.float64))
        >>> est = lean_top_eigenpair(lambda v: A @ v, torch.ones(4, dtype=torch.float64), tol=1e-8)
        >>> round(est.value, 6), est.converged, est.residual <= 1e-8
        (3.0, True, True)
        >>> est.vector.abs().round(decimals=6)
        tensor([1., 0., 0., 0.], dtype=torch.float64)
    """
    # max_iter=3.0 was taken and inf failed in int()'s words, tol=inf called any start converged
    tol = check_real("lean_top_eigenpair", "tol", tol, low=0.0, low_open=True)
    max_iter = check_integer("lean_top_eigenpair", "max_iter", max_iter, low=2, high=MAX_PRODUCTS)  # a Lanczos step and the check
    if v0.dim() != 1 or (v0.numel() == 0 and dimension is None) or not v0.is_floating_point():
        raise ValueError(f"v0 must be a non-empty 1-D floating-point tensor, got {v0.dtype} of "
                         f"shape {tuple(v0.shape)}")
    n = v0.numel() if dimension is None else check_integer("lean_top_eigenpair", "dimension", dimension)
    eps = unit_roundoff(matvec, v0.dtype)
    norm = scaled_norm(v0, reduce)   # (a norm < ~1e-154 underflowed to 0: "non-zero" refused)
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError("v0 must be finite and non-zero")
    home = v0 if overwrite else v0.clone()  # q_0's buffer, and the result's
    del v0
    q0 = home.div_(norm)
    matvecs = 0
    best, previous = None, math.inf
    exponent, unscale = 0, 1.0  # the solve runs on 2**-exponent A (set by the first product)

    def apply(v: torch.Tensor, out: torch.Tensor) -> None:
        if exponent:  # 2**-e A v into out, through a temporary (only for operators of norm
            tmp = torch.zeros_like(out)  # outside 2**-100 .. 2**100: no cost otherwise)
            _apply(matvec, v, tmp)
            out.add_(tmp.mul_(unscale))   # (as alpha=: a float16 2**18 is no Half, a RuntimeError)
        else:
            _apply(matvec, v, out)

    while max_iter - matvecs >= 2:
        budget = max_iter - matvecs
        # -- pass 1: the coefficients of T_m
        q, w = q0.clone(), torch.zeros_like(q0)
        alphas, betas = [], []
        while True:
            apply(q, w)
            matvecs += 1
            if matvecs == 1:
                # w = A q_0: norms of a float64 operator below ~1e-154 underflowed (beta = 0,
                # "converged" after 1-2 products, -1.7x off at 1e-200; 1.2e-8 off at 1e-160 with a
                # bound of 2.5e-15) and past ~1e154 overflowed (nan); exact powers of two
                exponent = product_exponent(w, reduce)
                unscale = math.ldexp(1.0, -exponent)
                if exponent:
                    w.mul_(unscale)
            a = inner_product(q, w, reduce)
            w.add_(q, alpha=-float(a))
            c = inner_product(q, w, reduce)
            w.add_(q, alpha=-float(c))
            alpha, beta = torch.stack([a + c, vector_norm(w, reduce)]).tolist()
            if not (math.isfinite(alpha) and math.isfinite(beta)):
                return EigenEstimate(float("nan"), home, matvecs, False, float("nan"))
            alphas.append(alpha)
            betas.append(beta)
            m = len(alphas)
            # O(m) on T_m's diagonals: a dense eigh of T_m at every step cost O(m^4) in all
            # (bench/bench_lean_tridiagonal.py)
            theta, s, lowest = tridiagonal_top_pair(alphas, betas[:-1])
            spread = max(abs(lowest), abs(theta))
            estimate = relative_residual(beta, s[-1], theta)
            invariant = beta <= rounding_level(spread, m, eps) or m == n  # stopping.krylov_invariant
            if estimate <= tol or invariant or 2 * (m + 1) > budget or beta == 0.0:
                break
            w.div_(beta)          # q_{j+1}
            q.mul_(-beta)         # -beta_j q_j: the next product is added to it
            q, w = w, q
        del q
        # -- pass 2: y = sum_j s_j q_j with the stored coefficients
        q, q0 = q0, None
        w.zero_()
        y = q * float(s[0])
        for j in range(m - 1):
            apply(q, w)
            matvecs += 1
            w.add_(q, alpha=-alphas[j]).div_(betas[j])
            q.mul_(-betas[j])
            q, w = w, q
            y.add_(q, alpha=float(s[j + 1]))
        del q, w
        # -- check: the residual of (y^T A y, y), computed, not estimated
        y.div_(vector_norm(y, reduce))
        Ay = torch.zeros_like(y)
        apply(y, Ay)
        matvecs += 1
        value = float(inner_product(y, Ay, reduce))
        residual = float(vector_norm(Ay.add_(y, alpha=-value), reduce))
        del Ay
        if not (math.isfinite(value) and math.isfinite(residual)):
            return EigenEstimate(float("nan"), home.copy_(y), matvecs, False, float("nan"))
        rel = relative_residual(residual, 1.0, value)
        scale = max(spread, abs(value))
        floor = error_floor(value, scale, eps)
        bound = max(rel, floor)
        best = EigenEstimate(scaled_back(value, exponent), home, matvecs, bound <= tol, rel, bound)
        q0 = home.copy_(y)  # the result; and the next cycle's start
        del y
        if rel <= tol:  # another cycle gains nothing, also where the floor is above tol
            break
        if rel <= STALL_FLOORS * floor and rel > previous / 2:
            # at rounding level, below any tol the dtype can certify: the computed residual stalls
            # there, and at a tol under the floor every cycle to max_iter was spent for nothing
            break
        previous = rel
    best.matvecs = matvecs
    return best
