"""Sharpness: top Hessian eigenvalue (sharpness), pre-conditioned sharpness, instability thresholds.

Everything here is matrix-free: the Hessian ``H`` of ``loss_fn(model(x), y)`` with respect to all
trainable parameters is only touched through Hessian-vector products (HVPs), and its top eigenpair
is found by a Lanczos solver written on torch tensors (:func:`lanczos_top_eigenpair`), so it runs
wherever the model runs (CPU or CUDA) and keeps its Krylov basis on that device.

Nothing in this module changes a model's parameters, gradients, buffers or train/eval mode, an
optimizer's state, or the global random number generators. The instability threshold the
measurements are compared with is :mod:`~catapult.curvature.instability`'s, re-exported here.
"""
from __future__ import annotations

import functools
import math

import torch

from catapult.curvature import distributed as dist_ops
from catapult.curvature import coarse_ranks, lean, sharded
from catapult.curvature.certify import certified, float32_certified, rounding_reach
from catapult.curvature.coarse import coarse_levels, coarse_start_vector, kink_guess, kink_seen
from catapult.curvature.forward_ad import refuse_sparse_products
from catapult.curvature.ggn import CURVATURES, GaussNewtonOperator
from catapult.curvature.hessian import HessianOperator, resolve_dtype
from catapult.curvature.instability import instability_threshold
from catapult.curvature.lanczos import EigenEstimate, lanczos_top_eigenpair
from catapult.curvature.microbatch import ChosenChunkSize, sample_count_or_none, sample_device
from catapult.curvature.modes import refuse_stale_compiled
from catapult.curvature.preconditioner import PreconditionedOperator, adam_preconditioner, check_preconditioned
from catapult.curvature.rank_agreement import same_call_on_every_rank
from catapult.curvature.start import (check_solver_args, initial_vector, outside_autocast,
                                      outside_inference_mode, solver_split)

__all__ = ["sharpness", "preconditioned_sharpness", "instability_threshold", "MEMORY_SETTINGS",
           "build_operator", "memory_setting", "lean_samples", "check_curvature"]

#: Named memory settings: ``"fast"`` (default: the whole batch in one graph, up to 32 Krylov
#: vectors, allocated as the solve grows: a clustered top spectrum, the project's GPT on BPE text,
#: needed 51 exact products with 20 and 27 with 32, where thick restarts had discarded progress)
#: and ``"lean"`` (micro-batches sized from the problem by
#: :func:`catapult.curvature.lean.lean_sizes`; the top eigenpair by the basis-free
#: :func:`catapult.curvature.lean.lean_top_eigenpair`, the top-k by a Krylov basis of 3-10
#: vectors sized there, so the peak memory is <= 3x a training step's; ``bench/RESULTS.md``;
#: but top-k keeps at least its restart floor, :func:`~catapult.curvature.top_k.restart_floor`,
#: ``min(3 k + b, max(2 k + 10, 32) + b - 1)`` vectors, 16 for the top 5, beyond that budget where
#: the sized basis is smaller, with the warning naming it only where no basis of 3 fits).
#: An explicit ``chunk_size`` overrides the setting; with ``"lean"`` an explicit ``max_basis``
#: is a cap on the sized basis (and selects the thick-restart solver with that basis).
MEMORY_SETTINGS = {"fast": {"chunks": 1, "max_basis": 32},
                   "lean": {"chunks": "sized", "max_basis": lean.LEAN_MAX_BASIS}}


def empty_batch_message(distributed: bool) -> str:
    """What ``memory='lean'`` says of a batch (``distributed``: this rank's shard) with no samples,
    as the products' own checks say it.

    >>> empty_batch_message(False)
    "memory='lean': the batch is empty: its inputs have 0 samples"
    """
    if not distributed:
        return "memory='lean': the batch is empty: its inputs have 0 samples"
    import torch.distributed as dist

    return f"distributed=True: the shard of rank {dist.get_rank()} holds no samples; give every rank some"


def memory_setting(memory: str, batch, chunk_size, max_basis, model=None, loss_fn=None, seed=0,
                   distributed=False, basis_free=False, basis_floor=0):
    """``(chunk_size, max_basis)`` for a named memory setting and explicit overrides.

    ``"lean"`` sizes both from the problem (:func:`catapult.curvature.lean.lean_sizes`, with
    ``P`` = trainable parameter count x element size and ``A`` =
    :func:`~catapult.curvature.lean.activation_bytes`, with ``L`` its largest tensor): ``m``
    micro-batches with ``A / m <= max(P / 2, 1 MiB)`` (:data:`~catapult.curvature.lean.LEAN_MIN_CHUNK_BYTES`) and the largest basis ``B <= 10`` with
    ``(B + 8) P + 2.6 A / m' <= 3 (P + A + L)`` (``m' = min(m, 4)`` for >= 256 samples). Where
    no ``B >= 3`` fits, it warns (RuntimeWarning) and uses ``B = 3``. Without a model it falls back
    to 4 micro-batches and 10 vectors; inputs may be tuples, lists or dicts of tensors sharing dim 0
    (:func:`~catapult.curvature.microbatch.sample_count`), with ``distributed`` too; where
    they hold no such tensors, 10 vectors and no micro-batches. With ``distributed=True`` every rank sizes
    from its own shard and then takes the ranks' smallest basis (the ranks must run the same
    number of products; micro-batches stay per rank). ``basis_free=True`` (the basis-free
    solver of :func:`sharpness`'s ``"lean"``) sizes only the micro-batches and never warns;
    ``basis_floor``: the basis the caller uses at least (:func:`~catapult.curvature.spectrum.top_eigenpairs`'
    restart floor), which the warning names.

    >>> model = torch.nn.Linear(2, 1, bias=False)   # P = 8, A = L = 40 bytes (n = 10)
    >>> batch = (torch.zeros(10, 2), torch.zeros(10, 1))
    >>> memory_setting("lean", batch, None, None, model, torch.nn.MSELoss())  # 40 B: one chunk
    (None, 10)
    >>> memory_setting("fast", batch, None, None)
    (None, 32)
    """
    if not isinstance(memory, str) or memory not in MEMORY_SETTINGS:  # a list: "unhashable type"
        raise ValueError(f"memory must be one of {sorted(MEMORY_SETTINGS)}, got {memory!r}")
    setting = MEMORY_SETTINGS[memory]
    if memory == "fast":
        return chunk_size, setting["max_basis"] if max_basis is None else max_basis
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else None
    n = lean_samples(inputs)
    device = sample_device(inputs)   # the collectives' (a nested batch's first tensor's)
    if n is None:
        return chunk_size, lean.LEAN_MAX_BASIS if max_basis is None else max_basis
    if model is None:  # no model to size from: the setting measured on the Fig. 1 FCN
        chunks, basis = 4, lean.LEAN_MAX_BASIS
    elif sharded.is_sharded(model):  # FSDP holds one block's weights at a time: no micro-batches
        chunks, basis = 1, lean.LEAN_MAX_BASIS
    else:
        model = dist_ops.unwrap_ddp(model)
        refuse_stale_compiled("memory='lean'", model)   # its sizing forward substitutes the parameters too

        def sized():  # a forward on this rank's shard
            if n == 0:   # (lean's sizing divided by the samples: ZeroDivisionError, on every rank)
                raise ValueError(empty_batch_message(distributed))
            trainable = [p for p in model.parameters() if p.requires_grad]
            if any(isinstance(p, torch.nn.parameter.UninitializedParameter) or p.is_meta for p in model.parameters()):
                return 1, lean.LEAN_MAX_BASIS   # no values: the operator's refusal names the parameter (torch's
                # "uninitialized parameter in numel" / "Tensor on device meta" came out of this sizing)
            param_bytes = sum(p.numel() for p in trainable) * trainable[0].element_size() if trainable else 0
            if param_bytes == 0:   # nothing to size: the operator's refusal names it (an IndexError, or
                return 1, lean.LEAN_MAX_BASIS   # lean_sizes' ZeroDivisionError for empty ones, came out)
            act_bytes, largest = lean.activation_bytes(model, loss_fn, batch, seed=seed)
            chunks, basis, fits = lean.lean_sizes(param_bytes, act_bytes, largest, n)
            if not fits and not basis_free:
                lean.warn_unfit(n, param_bytes, act_bytes, basis=basis_floor)
            return chunks, basis

        # a forward that fails on one rank's shard stops every rank (the others waited in the
        # basis all-reduce below until the group's timeout)
        chunks, basis = dist_ops.agreed(sized, device) if distributed else sized()
    if distributed:
        basis = dist_ops.agreed_minimum(basis, device=device)
    if chunk_size is None and chunks > 1:
        chunk_size = ChosenChunkSize(lean.chunk_rows(max(1, math.ceil(n / chunks)), batch))  # errors name memory='lean'

    def refuse_coupling():  # the user did not ask for micro-batches: name what did
        if model is not None and isinstance(chunk_size, ChosenChunkSize):
            lean.refuse_batch_coupling(model, chunk_size)

    # a rank whose shard is cut into micro-batches refuses; one with a single micro-batch must too
    dist_ops.agreed(refuse_coupling, device) if distributed else refuse_coupling()
    return chunk_size, basis if max_basis is None else min(basis, max_basis)


def lean_samples(inputs) -> int | None:
    """The sample count ``memory="lean"`` sizes its micro-batches by: dim 0 of a tensor, or of the
    tensors of nested inputs (also a rank's shard with ``distributed``); None where there is none
    (then no micro-batches).

    >>> lean_samples(torch.zeros(5, 2)), lean_samples({"ids": torch.zeros(5, 3), "flag": True}), lean_samples(3.0)
    (5, 5, None)
    """
    return sample_count_or_none(inputs)


def build_operator(model, loss_fn, batch, *, curvature="hessian", dtype=None, hvp="auto", seed=0,
                   chunk_size=None, distributed=False, retain_graph=True, sharded_vectors="full"):
    """The operator of :func:`sharpness`: the Hessian (:class:`HessianOperator`), or with
    ``curvature="ggn"`` the Gauss-Newton matrix (:class:`GaussNewtonOperator`, which takes no
    ``hvp`` mode or ``retain_graph``: its products are exact ``J^T H_L J``); with
    ``distributed=True``, that of the union of the ranks' shards
    (:class:`~catapult.curvature.distributed.DistributedOperator`), or for a model sharded by
    FSDP2 :class:`~catapult.curvature.sharded.ShardedHessianOperator` (``sharded_vectors``: its
    ``vectors``, ``"local"`` for the solvers that take split vectors,
    :func:`~catapult.curvature.start.solver_split`).

    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    >>> build_operator(model, torch.nn.MSELoss(), batch)(torch.tensor([1.0, 1.0]))
    tensor([4., 1.])
    """
    check_curvature(curvature)
    refuse_sparse_products(hvp if curvature == "hessian" else curvature, batch)   # before the ranks' forwards
    fsdp = isinstance(model, torch.nn.Module) and sharded.is_sharded(model)
    if fsdp:  # the options first; distributed=True is one of them
        sharded.reshard(model)  # the parameters are the shards again
        first = next((p for p in model.parameters() if p.requires_grad), None)
        sharded.check_sharded_options(distributed=distributed, hvp=hvp, dtype=resolve_dtype(dtype),
                                      chunk_size=chunk_size, curvature=curvature,
                                      param_dtype=None if first is None else first.dtype)
    if distributed:
        dist_ops.require_process_group()
        dist_ops.check_shardable(model)
        model = dist_ops.unwrap_ddp(model)
        params = [p for p in model.parameters()] if isinstance(model, torch.nn.Module) else []
        # every rank, before its operator: an empty shard, or a loss that is not a mean or a sum
        # over samples, is refused on all ranks alike
        weight, kind = dist_ops.union_weight(model, loss_fn, batch, params[0].device if params else None,
                                             testable=not fsdp, kind=True)
    if fsdp:
        return sharded.ShardedHessianOperator(model, loss_fn, batch, weight, seed=seed, vectors=sharded_vectors)

    def local_operator():
        if curvature == "ggn":
            return GaussNewtonOperator(model, loss_fn, batch, dtype=dtype, seed=seed, chunk_size=chunk_size)
        return HessianOperator(model, loss_fn, batch, dtype=dtype, hvp=hvp, seed=seed,
                               chunk_size=chunk_size, retain_graph=retain_graph)

    if distributed:  # a refusal on one rank's shard (its micro-batch split, its forward) stops all ranks
        return dist_ops.DistributedOperator(dist_ops.agreed(local_operator, params[0].device if params else None),
                                            weight, summed=kind == "sum")
    return local_operator()


def check_curvature(curvature) -> None:
    """Refuse a ``curvature=`` that is not one of :data:`CURVATURES`.

    >>> check_curvature("fisher")
    Traceback (most recent call last):
        ...
    ValueError: curvature must be one of ('hessian', 'ggn'), got 'fisher'
    """
    if not isinstance(curvature, str) or curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")


@outside_inference_mode
@outside_autocast
@same_call_on_every_rank
def sharpness(model: torch.nn.Module, loss_fn, batch, *, tol: float = 1e-3, max_iter: int = 100,
              dtype=None, init: torch.Tensor | None = None, hvp: str = "auto", seed: int = 0,
              max_basis: int | None = None, chunk_size: int | None = None, memory: str = "fast",
              coarse="auto", distributed: bool = False,
              curvature: str = "hessian") -> EigenEstimate:
    """Sharpness ``lambda_max(H)``: the top eigenvalue of the Hessian of the loss on one batch.

    ``H = d^2 L / d theta^2`` with ``L = loss_fn(model(inputs), targets)``, ``batch = (inputs,
    targets)``, ``theta`` = all parameters with ``requires_grad``. Found matrix-free by
    :func:`lanczos_top_eigenpair` on Hessian-vector products (:class:`HessianOperator`), stopping
    when the relative eigen-residual ``||H v - theta v|| / |theta| <= tol``. ``lambda_max`` is
    the largest *algebraic* eigenvalue (not the largest in magnitude, which power iteration
    finds when the Hessian has a large negative eigenvalue).

    Train/eval mode: the Hessian is taken in whatever mode the caller left the model in, and
    the mode is never changed. The loss whose stability matters is the one the optimizer
    descends, i.e. the train-mode loss (BatchNorm with batch statistics); call ``model.eval()``
    first for the curvature of the inference-mode loss. With dropout active, ``H`` is random
    (it depends on the dropout mask): every forward pass of one call uses the same mask, drawn
    from a generator seeded with ``seed`` (the global RNG is left untouched), so the solver sees
    one fixed symmetric operator; another ``seed`` gives another mask. Called under
    ``torch.no_grad()`` or ``torch.inference_mode()`` it records its own graphs all the same (so do
    the other curvature functions and :func:`catapult.critical_lr`).

    Args:
        model, loss_fn, batch: the loss ``loss_fn(model(inputs), targets)``.
        tol: relative eigen-residual to reach (the eigenvalue itself is typically far more
            accurate, ~ tol^2 * theta / gap).
        max_iter: maximum Hessian-vector products (at least 2 with ``memory="lean"``, whose
            solver needs a second pass to form its vector).
        dtype: ``None`` (the parameters' dtype; float32 for a float16/bfloat16 model, whose
            rounding is above any useful ``tol``), ``torch.float32`` or ``torch.float64``
            (parameters, buffers and floating inputs/targets are cast for the computation only).
        init: flat start vector, e.g. the previous ``est.vector`` (warm start), mixed with a
            part ``min(100 tol, 1)`` of the seeded random vector, so that a start lying in an
            invariant subspace can leave it (:func:`~catapult.curvature.start.mixed_start`);
            default that standard normal vector alone, from a private generator seeded with ``seed``.
        hvp: ``"auto"``, ``"double_backprop"``, ``"forward_over_reverse"`` or
            ``"finite_difference"`` (two gradients per product, no double backward, each
            checked for kinks: a ValueError where the steps cross them; the solve ends with two
            or three more products at its vector, so ``residual`` is taken and ``error_bound``
            includes the products' own error: :mod:`~catapult.curvature.certify`).
        seed: seeds the random start vector and the dropout mask.
        max_basis: Krylov vectors kept in memory (thick restart beyond that); each costs one
            parameter-sized vector. ``None``: 32 (``memory="fast"``) or no basis at all
            (``"lean"``'s basis-free solver; an explicit value there selects the thick-restart
            solver with a basis sized from the problem, 3-10, capped by it).
        chunk_size: evaluate each HVP over micro-batches of at most this many samples (see
            :class:`HessianOperator`): exact for per-sample mean or sum losses, less memory
            (the HVP's working memory scales with the chunk, not the batch), about a gradient
            more compute per HVP. ``None`` (default) = the whole batch in one graph.
        memory: ``"fast"`` (default, speed first) or ``"lean"``: micro-batches sized from the
            parameter count and the batch's activations (:func:`memory_setting`), no gradient
            graph kept between products, products accumulated in place
            (:meth:`HessianOperator.accumulate`) and the basis-free solver
            :func:`catapult.curvature.lean.lean_top_eigenpair` (three parameter-sized vectors;
            about twice the products). Measured peak 1.0-2.8x a training step's on the Fig. 1
            FCN at 5000-1000 samples (``bench/RESULTS.md``, issue 16, 3c). ``tol`` is kept: the
            returned residual is computed from ``A y``, not estimated.
        coarse: start vector from solves on cheaper operators (:mod:`catapult.curvature.coarse`):
            ``"auto"`` (default; only without ``init``, and not for a model sharded by FSDP2: the
            whole batch with one-sided finite-difference products, one gradient each, skipped
            after two gradients where the loss is not smooth at the difference step, e.g. ReLU
            kinks in float32, and then, for batches of >= 256 samples, nested sub-batches (every
            16th, then every 4th sample: where a float32 model holds kinked activations, modules
            or ops such as ``F.relu``, these alone, :func:`~catapult.curvature.coarse.kink_guess`);
            each level stops at a residual of 3e-3, or at ``tol`` where that is looser), ``None`` (a random start), or
            ``(divisor, tol)`` levels (``divisor`` an integer >= 2 or ``"finite_difference"``).
            With ``distributed=True`` each rank cuts its own shard alike and the products are
            all-reduced; ``"auto"`` chooses by the union's sample count and takes sub-batch
            levels (after the difference level) only where a coarse product's work per rank pays for its all-reduce
            (:func:`~catapult.curvature.coarse_ranks.sub_batch_pays`).
            The answer and its ``tol`` are the exact full batch's; ``est.coarse_matvecs``
            counts the cheaper products.
        distributed: inside an initialised ``torch.distributed`` process group, ``batch`` is
            this rank's shard and the Hessian is that of the union's loss (products all-reduced
            with weights ``|B_r| / |B|`` for a mean over samples, 1 for a sum; a loss that is
            neither is refused: :func:`~catapult.curvature.distributed.union_weight`); every
            rank gets the same estimate, and a refusal on one rank's shard is raised on all. Works with a plain or a DDP-wrapped model; a BatchNorm in train mode
            is refused (:mod:`catapult.curvature.distributed`). A model sharded by FSDP2 needs it:
            its products are then checked finite differences of FSDP's gradient, and
            ``est.vector`` is this rank's part (:mod:`catapult.curvature.sharded`).
        curvature: ``"hessian"`` (default) or ``"ggn"``: the top eigenvalue of the Gauss-Newton
            matrix ``G = J^T H_L J`` (:class:`~catapult.curvature.ggn.GaussNewtonOperator`)
            instead, the same as ``top_eigenpairs(k=1, curvature="ggn")`` but with this
            function's solvers and ``memory`` settings. ``hvp`` does not apply, and there are no
            coarse levels (``coarse="auto"`` means none; explicit levels are refused): they are
            Hessian solves.

    Memory: the peak is about ``max_basis + 4`` parameter-sized vectors plus the HVP's working
    memory (~2.6x a training step's activations on the whole batch, or on one chunk with
    ``chunk_size``). ``memory="lean"`` holds about 4 parameter-sized vectors plus one
    micro-batch's working memory (``bench/RESULTS.md``).

    Returns:
        :class:`EigenEstimate` with ``value`` (float), ``vector`` (flat, on the model's device,
        in the computation dtype), ``matvecs``, ``converged``, ``residual``. A non-finite loss
        gives ``value = nan``, ``converged = False`` instead of an error.

    Example: ``L(w) = mean((x w - y)^2)`` over the samples ``x = (2, 0), (0, 1)`` has the
    Hessian ``diag(4, 1)``, so the sharpness is 4 (and GD is stable up to ``lr = 2 / 4``):
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> est = sharpness(model, torch.nn.MSELoss(), batch)
        >>> round(est.value, 3), est.converged, est.vector.abs().round(decimals=3)
        (4.0, True, tensor([1., 0.]))
    """
    tol, max_iter, max_basis = check_solver_args(tol, max_iter, max_basis)
    check_curvature(curvature)
    refuse_sparse_products(hvp if curvature == "hessian" else curvature, batch)   # before lean's probe
    if curvature == "ggn" and coarse not in (None, "auto"):
        raise ValueError("coarse levels are Hessian solves: use coarse=None (or 'auto') with "
                         "curvature='ggn'")
    basis_free = memory == "lean" and max_basis is None  # lean's solver: lean.lean_top_eigenpair
    chunk_size, max_basis = memory_setting(memory, batch, chunk_size, max_basis, model, loss_fn,
                                           seed, distributed, basis_free=basis_free)
    # lean: no gradient graph kept between products either (lean.lean_top_eigenpair)
    options = {"chunk_size": chunk_size, "retain_graph": False} if basis_free else None
    op = build_operator(model, loss_fn, batch, curvature=curvature, dtype=dtype, hvp=hvp,
                        seed=seed, chunk_size=chunk_size, distributed=distributed,
                        retain_graph=not basis_free, sharded_vectors="local")
    v0 = initial_vector(op, init, seed, distributed, tol=tol)  # a copy: solvers write into it
    fsdp = sharded.is_sharded(model)
    # rank 0's init is every rank's (initial_vector): an init on one rank only ran levels on the others
    warm = dist_ops.rank0_flag(init is not None, op.device) if distributed and not fsdp else init is not None
    if warm or curvature == "ggn" or fsdp:
        levels = []   # (a model sharded by FSDP2 starts cold: coarse_ranks)
    elif distributed:   # each rank's shard cut alike, the products all-reduced (coarse_ranks)
        levels = coarse_ranks.union_levels(batch, coarse, tol, op.device, params=v0.numel(),
                                           kinked=kink_seen(model, op.dtype, getattr(op, "kinked", False)))
    else:
        levels = coarse_levels(batch, coarse, tol)
        if isinstance(coarse, str) and coarse == "auto":   # float32 ReLU: straight to the sub-batch levels
            levels = kink_guess(levels, model, op.dtype, graph=getattr(op, "kinked", False))
    coarse_products, coarse_cost = 0, 0.0
    if levels:
        sub_operator = coarse_ranks.sub_batch_operator(op, model, loss_fn, batch, dtype=dtype, hvp=hvp, seed=seed,
                                                       options=options) if distributed else None
        v0, coarse_products, coarse_cost = coarse_start_vector(
            model, loss_fn, batch, v0, levels, dtype=dtype, hvp=hvp, seed=seed,
            max_basis=max_basis, op=op, operator_options=options, sub_operator=sub_operator,
            solve=functools.partial(lean.lean_top_eigenpair, overwrite=True) if basis_free else None)
    solve = _solver(op, max_basis=max_basis, basis_free=basis_free)
    est = certified(op, solve(v0, max_iter, tol), tol=tol, max_iter=max_iter, solve=solve,
                    reduce=solver_split(op)["reduce"])
    est.coarse_matvecs, est.coarse_cost = coarse_products, coarse_cost
    return est


def _solver(matvec, *, max_basis, basis_free: bool, split_of=None):
    """``solve(v0, budget, tol)``: the top eigenpair of ``matvec`` from ``v0`` (overwritten) in at
    most ``budget`` products, by the basis-free lean solver or by Lanczos; ``split_of`` the
    operator whose vectors may be split over the ranks (``matvec`` itself by default)."""
    split = solver_split(matvec if split_of is None else split_of)
    if basis_free:
        return lambda v0, budget, tol: lean.lean_top_eigenpair(matvec, v0, tol=tol, max_iter=max(budget, 2),
                                                               overwrite=True, **split)
    return lambda v0, budget, tol: lanczos_top_eigenpair(matvec, v0, tol=tol, max_iter=budget,
                                                         max_basis=max_basis, _fresh_output=True, **split)


@outside_inference_mode
@outside_autocast
@same_call_on_every_rank
def preconditioned_sharpness(model: torch.nn.Module, loss_fn, batch,
                             optimizer: torch.optim.Optimizer, *, tol: float = 1e-3,
                             max_iter: int = 100, dtype=None, init: torch.Tensor | None = None,
                             hvp: str = "auto", seed: int = 0, max_basis: int | None = None,
                             scale_by_group_lr: bool = False,
                             chunk_size: int | None = None, memory: str = "fast",
                             distributed: bool = False,
                             curvature: str = "hessian") -> EigenEstimate:
    """Pre-conditioned sharpness ``lambda_max(P^-1 H)`` for Adam, AdamW and GI-Adam.

    ``P`` is the diagonal preconditioner the optimizer's *next* step will apply, rebuilt from
    its state without changing it: with ``g`` the gradient of the loss on ``batch``, ``t =
    state["step"]`` (0 with no state yet; ``t + 1`` below is torch's own next count, which a float32
    ``step`` stops at ``2**24``: :func:`catapult.optim.step_count.torch_next_step`), ``v = state["exp_avg_sq"]`` (0 with no state; for
    GI-Adam with no state the ``v_0`` its first step would create from ``g``, via
    ``optimizer.initial_exp_avg_sq``: ``v_0 = g^2`` by default, so ``v' = g^2``)::

        v' = b2 * v + (1 - b2) * g^2
        P  = (1 - b1^(t+1)) * (sqrt(v' / (1 - b2^(t+1))) + eps)

    (GI-Adam groups with ``v_bias_correction=False`` skip the ``1 - b2^(t+1)`` division; with
    ``amsgrad`` the running maximum of ``v`` is used. RAdam, once rectified: each parameter's
    block also carries ``r_p / r_ref``, its own next step's rectification relative to the
    threshold's, since torch counts each parameter's steps apart:
    :func:`catapult.optim.thresholds.radam_step_scales`; 1 where the counts and ``beta2`` agree;
    a step rectified for some parameters only is refused.) ``P^-1 H`` is not symmetric; its
    eigenvalues are those of the symmetric ``P^-1/2 H P^-1/2``, whose top eigenpair the Lanczos
    solver finds (``est.vector`` is in those coordinates: ``P^1/2`` times a ``P^-1 H``
    eigenvector). Compare with ``instability_threshold(optimizer)`` = ``(2+2 b1)/((1-b1) lr)``.

    torch Adam with ``weight_decay`` (coupled L2) feeds ``g + wd * theta`` into ``v`` and descends
    ``L + wd/2 ||theta||^2``; both are included (the operator becomes
    ``P^-1/2 (H + wd I) P^-1/2``). Decoupled weight decay (AdamW, GI-Adam) is not curvature and is
    left out. Parameters with ``requires_grad`` that belong to no param group are not moved by
    the step and get ``P^-1 = 0``, as do those the loss never reaches whose ``.grad`` is None at the call
    (torch's step skips them; one whose ``.grad`` holds zeros, ``zero_grad(set_to_none=False)``, is stepped and
    keeps its rows, e.g. ``wd / P`` under coupled L2: call where the step reads ``.grad``, after ``backward``).
    ``scale_by_group_lr=True`` multiplies each group's block of
    ``P^-1`` by ``group["lr"] / param_groups[0]["lr"]`` (per-group lr multipliers, e.g. muP;
    while the first group moves nothing (lr 0, ``requires_grad=False``) and another moves, by ``group["lr"]``
    over the first moving group's, as :class:`catapult.SharpnessTracker` measures it and
    ``instability_threshold(optimizer)`` takes its lr (``reference_group``); while every group is at lr 0, by the
    groups' ``lr_mult`` ratios: :func:`catapult.optim.thresholds.group_lr_multipliers`).

    Float32 and a near-zero ``P``: ``error_bound``'s rounding floor is of ``P^-1/2 H P^-1/2``'s scale,
    but the rounding of ``H``'s products is magnified by ``P``'s spread (up to ``max P / min P``),
    and the gradient's own rounding moves ``P`` where ``|g|`` is near ``eps``. Where ``P`` has entries
    near ``(1 - b1) eps`` (rows of zero gradient: a bias before a train-mode BatchNorm, a dead
    unit's weights), a float32 solve said ``converged=True`` with an error beyond its bound (a
    Linear-BatchNorm-tanh-Linear at Adam's first step: 1.2e-5 .. 3.2e-4 off the float64 dense value,
    bounds 1.3e-6 .. 9.2e-6, 9 of 12 seeds at ``tol=1e-5``). So a float32 solve ends with the reach of
    that rounding along its vector ``y``, ``8 eps max P sum y_i^2 / P_i`` over the rows of nonzero
    gradient (:func:`~catapult.curvature.certify.rounding_reach`): where it is within ``tol`` it is
    folded into ``error_bound``; where it exceeds ``tol``, the certificate is taken again in float64:
    one gradient (``P``) and one product along ``y``, the model evaluated on float64 copies of its
    parameters (:func:`~catapult.curvature.certify.checked_in_float64`), and ``error_bound`` is that
    residual's, ``converged`` whether it is within ``tol``; ``value``, ``vector`` (float32) and
    ``matvecs`` stay the float32 solve's. Those BatchNorm solves are then within their bounds, but the
    bounds are of the float32 vector's float64 residual (1e-4 .. 1.5e-2 where the error was 1.6e-7 ..
    2.7e-4): ``converged=False`` at ``tol=1e-5``. Pass ``dtype=torch.float64`` for a converged answer
    there (the same solves: 2e-13 .. 6e-11 off, every one within its bound). (Not for a model
    sharded by FSDP2; not in float64, whose rounding is 5e8 times smaller.)

    Keyword arguments are those of :func:`sharpness` (``distributed=True`` reduces the gradient
    too, so ``P`` is built from the union's gradient; no ``coarse`` start here;
    ``curvature="ggn"`` puts the Gauss-Newton matrix in place of ``H``). Mode, dtype and
    RNG are handled the same way; neither the model nor the optimizer state is changed.

    Example: Hessian ``diag(4, 1)`` (as in :func:`sharpness`) at ``w = 0`` with targets
    ``(1, 1)``, gradient ``g = (-2, -1)``; Adam's first step has ``P = (1 - b1) |g| =
    (0.2, 0.1)``, so ``P^-1 H = diag(20, 10)``:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [1.0]]))
        >>> opt = torch.optim.Adam(model.parameters(), lr=1.0)
        >>> est = preconditioned_sharpness(model, torch.nn.MSELoss(), batch, opt)
        >>> round(est.value, 3), round(instability_threshold(opt), 3)    # 38 / lr
        (20.0, 38.0)
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    check_preconditioned(optimizer)
    tol, max_iter, max_basis = check_solver_args(tol, max_iter, max_basis, owner="preconditioned_sharpness")
    check_curvature(curvature)
    refuse_sparse_products(hvp if curvature == "hessian" else curvature, batch)   # as in sharpness
    basis_free = memory == "lean" and max_basis is None  # as in sharpness
    chunk_size, max_basis = memory_setting(memory, batch, chunk_size, max_basis, model, loss_fn,
                                           seed, distributed, basis_free=basis_free)
    op = build_operator(model, loss_fn, batch, curvature=curvature, dtype=dtype, hvp=hvp,
                        seed=seed, chunk_size=chunk_size, distributed=distributed,
                        retain_graph=not basis_free, sharded_vectors="local")
    inner = dist_ops.unwrap_ddp(model) if distributed else model
    d, l2 = adam_preconditioner(inner, optimizer, op, scale_by_group_lr)

    matvec = PreconditionedOperator(op, d, l2)
    v0 = initial_vector(op, init, seed, distributed, tol=tol)
    solve = _solver(matvec, max_basis=max_basis, basis_free=basis_free, split_of=op)
    reduce = solver_split(op)["reduce"]
    est = certified(matvec, solve(v0, max_iter, tol), tol=tol, max_iter=max_iter, solve=solve, reduce=reduce)
    if op.dtype != torch.float32 or sharded.is_sharded(model) or not math.isfinite(est.value):
        return est
    reach = rounding_reach(d, est.vector, op.gradient(), reduce)
    # (the same decision on every rank: d is the union's; rank 0's)
    checked = dist_ops.rank0_flag(reach > tol, op.device) if distributed else reach > tol
    if not checked or op.device.type == "mps":   # (MPS holds no float64)
        return float32_certified([est], [reach], [tol], checks=[False])[0]
    del matvec, op, solve   # (the float32 graph, before the float64 one)

    def float64_product(positions, Y):
        op64 = build_operator(model, loss_fn, batch, curvature=curvature, dtype=torch.float64, hvp=hvp,
                              seed=seed, chunk_size=chunk_size, distributed=distributed,
                              retain_graph=not basis_free, sharded_vectors="local")
        return PreconditionedOperator(op64, *adam_preconditioner(inner, optimizer, op64, scale_by_group_lr))(Y[0])[None]

    # (a forward that makes float32 tensors itself: the reach stands in)
    return float32_certified([est], [reach], [tol], float64_product, checks=[True], reduce=reduce)[0]
