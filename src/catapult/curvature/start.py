"""A solve's start: the call's grad mode (:func:`outside_inference_mode`), the arguments every
eigen-solver checks, its start vector, and for an
operator on vectors split over the ranks (a model sharded by FSDP2,
:mod:`catapult.curvature.sharded`) the ``reduce`` and ``dimension`` the solvers then take.
Shared by :mod:`~catapult.curvature.sharpness` and :mod:`~catapult.curvature.spectrum`.
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import torch

from catapult.arguments import MAX_PRODUCTS, check_integer, check_real, check_seed
from catapult.curvature import distributed as dist_ops
from catapult.curvature.krylov import product_exponent, scaled_norm
from catapult.curvature.microbatch import map_tensors, tensor_leaves
from catapult.scaled_layers import autocast_enabled

__all__ = ["outside_inference_mode", "outside_autocast", "check_solver_args", "check_max_basis", "start_vector", "initial_vector",
           "split_operator", "solver_split", "WARM_START_MIX", "WARM_START_MIX_MAX", "warm_start_weight", "seeded_normal", "mixed_start",
           "mixed_starts", "real_init", "init_direction"]

#: The seeded random part of every warm start per unit of the solve's ``tol``
#: (:func:`warm_start_weight`). Without it a warm start lying wholly in an invariant subspace of the
#: operator stays there: on a GPT under torch Adam with coupled weight decay the attention key bias
#: (zero gradient: softmax ignores a shift common to every key) is a diagonal block of its own, its
#: top is the whole operator's top for the first steps, and every later warm-started solve came
#: back "converged" on that block's top, up to 90% below the operator's (``bench/RESULTS.md``,
#: issue 16, 2b: the measurements behind 100). A part ``w`` puts a residual of about ``w`` in the
#: start, so the test ``residual <= tol`` cannot pass before Lanczos has damped it ``w / tol``
#: times or found what lies above; the damping costs products in proportion to ``log(w / tol)``,
#: and on a spectrum whose bulk is near 0 (a network's) next to none.
WARM_START_MIX = 100.0
#: The largest random part (:func:`warm_start_weight`): as large as the given vector.
WARM_START_MIX_MAX = 1.0


def outside_inference_mode(fn):
    """``fn`` run with inference mode off when it is called inside ``torch.inference_mode()``
    (and unchanged otherwise), as it already runs under ``torch.no_grad()``: autograd records no
    graph in inference mode, so the Hessian products and the critical-lr search failed with "the
    loss does not depend on any trainable parameter", a wrong diagnosis. A batch made inside
    inference mode (an evaluation loop's) is passed as a clone, made outside it: every curvature
    function and ``critical_lr`` raised torch's "Inference tensors cannot be saved for backward".

    >>> @outside_inference_mode
    ... def grad_recorded(x):
    ...     return torch.zeros(1, requires_grad=True).mul(x).requires_grad
    >>> with torch.inference_mode():
    ...     x = torch.ones(1)
    ...     grad_recorded(x)
    True
    >>> grad_recorded(x)
    True
    """
    def usable(arg):
        # the batch walker's containers (microbatch.map_tensors: a UserDict, dict subclasses,
        # dataclasses, which torch's pytree took for leaves); the model and what holds no
        # inference tensor are passed as they are
        if isinstance(arg, torch.nn.Module) or not any(t.is_inference() for t in tensor_leaves(arg)):
            return arg
        return map_tensors(lambda t: t.clone() if t.is_inference() else t, arg)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not torch.is_inference_mode_enabled():
            return fn(*map(usable, args), **{key: usable(value) for key, value in kwargs.items()})
        with torch.inference_mode(False):
            return fn(*map(usable, args), **{key: usable(value) for key, value in kwargs.items()})
    return run


def _autocast_devices() -> list[str]:
    """The device types whose autocast is on in this thread."""
    return [d for d in ("cpu", "cuda", "xpu", "mps", "hpu") if autocast_enabled(d)]


def outside_autocast(fn):
    """``fn`` run with autocast off when it is called inside ``torch.autocast(...)`` (a
    training step's mixed-precision region), and unchanged otherwise. Under autocast the Hessian
    products came back in bfloat16 / float16 while the Krylov basis is float32: the solvers
    failed inside ("addmv input tensors must have the same dtype"), and ``dtype=torch.float64``
    could not hold. The computation dtype is ``dtype``'s, as outside autocast (low precision
    rounds above any useful ``tol``: see ``sharpness``'s ``dtype``).

    >>> @outside_autocast
    ... def product_dtype():
    ...     return torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     product_dtype()
    torch.float32
    """
    @functools.wraps(fn)
    def run(*args, **kwargs):
        devices = _autocast_devices()
        if not devices:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device in devices:
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)
    return run


def seeded_normal(n: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    """``n`` standard normal entries from a generator on ``device`` seeded with ``seed``: a cold
    solve's start vector, and the random part of a warm one (:func:`mixed_start`).

    >>> torch.equal(seeded_normal(3, torch.float64, torch.device("cpu"), 0),
    ...             seeded_normal(3, torch.float64, torch.device("cpu"), 0))
    True
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(check_seed("seeded_normal", "seed", seed, optional=False))  # int(seed): 3.5 and "3" were 3
    return torch.randn(n, generator=gen, dtype=dtype, device=device)


def warm_start_weight(tol: float) -> float:
    """The random part's weight in a warm start for a solve to ``tol``:
    ``min(WARM_START_MIX * tol, WARM_START_MIX_MAX)`` (0.1 at the default ``tol=1e-3``).

    >>> warm_start_weight(1e-3), warm_start_weight(0.5)
    (0.1, 1.0)
    """
    return min(WARM_START_MIX * float(tol), WARM_START_MIX_MAX)


def mixed_start(vector: torch.Tensor, random: torch.Tensor, weight: float, reduce=None) -> torch.Tensor:
    """A warm start with a way out of an invariant subspace::

        v0 = v / ||v|| + weight * r / ||r||

    for the given vector ``v`` (e.g. a previous ``est.vector``) and a random ``r``
    (:func:`seeded_normal`), ``weight`` from :func:`warm_start_weight`. Lanczos cannot leave an
    invariant subspace its start lies in, and its residual test passes on that subspace's own top
    (some eigenvalue, not the largest); ``r`` reaches every eigenvector. ``reduce`` sums over the
    ranks for vectors split across them.

    >>> mixed_start(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 5.0]), 0.25).tolist()
    [1.0, 0.25]
    """
    # scaled_norm: a vector 2**-530 v (its squares partly subnormal) had a norm 2e-6 off (the same bits in range)
    scale = scaled_norm(vector, reduce)
    return (vector / scale).add_(random, alpha=float(weight) / scaled_norm(random, reduce))


def mixed_starts(rows: torch.Tensor, seed: int, tol: Sequence[float]) -> torch.Tensor:
    """Each row of ``rows`` (a batched solver's warm starts, one per member, each to its own
    ``tol``) as :func:`start_vector` makes a warm start of it with this ``seed``, row by row in a
    fresh copy of each (so a member's start rounds as one solve's: the batched engines against
    ``local``).

    >>> rows = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    >>> one = start_vector(rows[0], 2, torch.float64, torch.device("cpu"), 0, tol=1e-3)
    >>> torch.equal(mixed_starts(rows, 0, [1e-3, 1e-2])[0], one)
    True
    """
    n = rows.shape[1]
    return torch.stack([mixed_start(row.clone(memory_format=torch.contiguous_format),
                                    seeded_normal(n, rows.dtype, rows.device, seed), warm_start_weight(t))
                        for row, t in zip(rows, tol)])


def real_init(init) -> torch.Tensor:
    """``init`` detached and flattened (no copy) once it is a real tensor; a TypeError naming
    ``init`` otherwise: a non-tensor, a bool tensor, or a complex one (whose cast to a real dtype
    dropped its imaginary part with only a warning).

    >>> real_init(torch.tensor([[3.0, 4.0]]))
    tensor([3., 4.])
    >>> real_init(torch.tensor([1j]))
    Traceback (most recent call last):
    ...
    TypeError: init must be a real tensor (e.g. a previous est.vector), got dtype torch.complex64
    """
    if not torch.is_tensor(init):
        raise TypeError(f"init must be a flat tensor (e.g. a previous est.vector), got "
                        f"{type(init).__name__}")
    if init.is_complex() or init.dtype == torch.bool:
        raise TypeError(f"init must be a real tensor (e.g. a previous est.vector), got dtype {init.dtype}")
    return init.detach().reshape(-1)


def init_size_error(init, n: int, on_rank: str = "") -> ValueError:
    """The ValueError for an ``init`` whose size is not the model's ``n`` trainable entries; a
    ``k x n`` block (a previous :class:`~catapult.curvature.top_k.Eigenpairs`' ``vectors``) is told
    that ``init`` is one flat vector, and to pass a row.

    >>> init_size_error(torch.zeros(3, 8), 8)
    ValueError('init is one flat start vector of 8 entries, got a 3 x 8 block (a previous Eigenpairs.vectors?): pass one row, e.g. eig.vectors[0]')
    """
    size = int(init.numel())
    if init.dim() == 2 and init.shape[0] > 1 and init.shape[1] == n:
        return ValueError(f"init is one flat start vector of {n} entries{on_rank}, got a {init.shape[0]} x "
                          f"{init.shape[1]} block (a previous Eigenpairs.vectors?): pass one row, e.g. eig.vectors[0]")
    return ValueError(f"init has {size} elements but the model has {n} trainable parameter entries{on_rank}")


def start_vector(init, n: int, dtype: torch.dtype, device: torch.device, seed: int, *, tol: float):
    """The start vector of a solve to ``tol``: ``init`` flattened and cast (checked: finite,
    non-zero, one entry per trainable parameter entry; never ``init``'s memory, which the solvers
    and ``distributed``'s broadcast write into) with a seeded random part mixed in
    (:func:`mixed_start`, :func:`warm_start_weight`), or a standard normal vector seeded with
    ``seed`` (:func:`seeded_normal`).

    >>> v = start_vector(torch.tensor([[3.0, 4.0]]), 2, torch.float64, torch.device("cpu"), 0, tol=1e-3)
    >>> r = seeded_normal(2, torch.float64, torch.device("cpu"), 0)
    >>> torch.allclose(v, torch.tensor([0.6, 0.8], dtype=torch.float64) + 0.1 * r / r.norm())
    True
    >>> start_vector(None, 3, torch.float32, torch.device("cpu"), 0, tol=1e-3).shape
    torch.Size([3])
    """
    if init is None:
        return seeded_normal(n, dtype, device, seed)
    source = real_init(init)
    if source.numel() != n:
        raise init_size_error(init, n)
    if not (bool(torch.isfinite(source).all()) and bool((source != 0).any())):
        raise ValueError("init must be finite and non-zero")
    return mixed_start(init_direction(source, dtype, device), seeded_normal(n, dtype, device, seed),
                       warm_start_weight(tol))


def init_direction(source: torch.Tensor, dtype: torch.dtype, device, reduce=None) -> torch.Tensor:
    """``source`` (finite, non-zero: checked) cast to ``dtype`` on ``device`` (a copy), times
    ``2**-e`` first (exact) where its largest entry lies outside ``dtype``'s window
    (:func:`~catapult.curvature.krylov.product_exponent`; over the ranks' parts with ``reduce``):
    only its direction counts. Inside it, ``source`` as it is (the start of an ordinary init, bit
    for bit). Before, an init whose norm's squares over- or underflowed only partly kept a norm off by
    up to 1e-4 (float64, 2**-530 v), so its mixed start was not the one ``v`` gives.

    >>> v = torch.tensor([3.0, 4.0], dtype=torch.float64) * 2.0 ** -1000
    >>> init_direction(v, torch.float32, "cpu").tolist()
    [0.375, 0.5]
    """
    exponent = product_exponent(source, reduce, dtype=dtype)
    scaled = source * math.ldexp(1.0, -exponent) if exponent else source
    return scaled.to(device=device, dtype=dtype, copy=True)


def split_operator(op):
    """The operator on vectors split over the ranks behind ``op`` (itself, or the one a
    pre-conditioned operator wraps, ``op.op``: a
    :class:`~catapult.curvature.sharded.ShardedHessianOperator` with ``vectors="local"``), or None.

    >>> from catapult.curvature.sharpness import build_operator
    >>> split_operator(build_operator(torch.nn.Linear(2, 1), torch.nn.MSELoss(), (torch.eye(2), torch.zeros(2, 1)))) is None
    True
    """
    for candidate in (op, getattr(op, "op", None)):
        if getattr(candidate, "local", False):
            return candidate
    return None


def initial_vector(op, init, seed: int, distributed: bool, *, tol: float) -> torch.Tensor:
    """The start vector for a solve on ``op`` to ``tol``, in its coordinates (a copy either way): this
    rank's part for an operator on vectors split over the ranks (``op.local``, or that of the
    operator a pre-conditioned one wraps:
    :meth:`~catapult.curvature.sharded.ShardedHessianOperator.start_vector`), else
    :func:`start_vector`, with ``distributed`` rank 0's ``init`` on every rank.

    >>> from catapult.curvature.sharpness import build_operator
    >>> H = build_operator(torch.nn.Linear(2, 1, bias=False), torch.nn.MSELoss(), (torch.eye(2), torch.zeros(2, 1)))
    >>> initial_vector(H, None, 0, distributed=False, tol=1e-3)
    tensor([ 1.5410, -0.2934])
    """
    split = split_operator(op)
    if split is not None:
        return split.start_vector(init, seed, tol=tol)
    if not distributed:
        return start_vector(init, op.numel, op.dtype, op.device, seed, tol=tol)
    # rank 0's init decides for every rank (an init given on rank 0 only deadlocked: rank 0
    # broadcast while the others went on to their first product's all-reduce)
    from_rank0 = dist_ops.rank0_flag(init is not None, op.device)
    v0 = dist_ops.agreed(lambda: start_vector(init if from_rank0 else None, op.numel, op.dtype, op.device, seed,
                                                 tol=tol),
                         op.device)
    if from_rank0:
        dist_ops.broadcast_vector(v0)
    return v0


def solver_split(op) -> dict:
    """The solvers' ``reduce`` and ``dimension`` for ``op``: an operator on vectors split over
    the ranks (:class:`~catapult.curvature.sharded.ShardedHessianOperator` with local vectors,
    or a pre-conditioned operator wrapping one) has them; for any other both are None.

    >>> from catapult.curvature.sharpness import build_operator
    >>> solver_split(build_operator(torch.nn.Linear(2, 1), torch.nn.MSELoss(), (torch.eye(2), torch.zeros(2, 1))))
    {'reduce': None, 'dimension': None}
    """
    split = split_operator(op)
    return {"reduce": None, "dimension": None} if split is None else {"reduce": split.reduce,
                                                                      "dimension": split.dimension}


def check_solver_args(tol, max_iter, max_basis=None, *, owner: str = "sharpness") -> tuple[float, int, int | None]:
    """``(tol, max_iter, max_basis)`` as float, int and int-or-None once ``tol`` is in ``(0, 1)``
    (a relative error bound: at 1 or more it holds for any value, the sign's included), ``max_iter`` an integer in ``[1, MAX_PRODUCTS]`` (10**5,
    :data:`catapult.arguments.MAX_PRODUCTS`) and ``max_basis`` None or an integer >= 2
    (:func:`~catapult.arguments.check_integer`: NumPy integers and 0-d tensors are numbers too);
    a ValueError naming ``owner`` and the argument otherwise.

    >>> check_solver_args(1e-3, 10)
    (0.001, 10, None)
    >>> check_solver_args(0.0, 10)
    Traceback (most recent call last):
    ...
    ValueError: sharpness tol must be a finite number in (0, 1); got 0.0
    >>> check_solver_args(1e-3, 10 ** 9)
    Traceback (most recent call last):
    ...
    ValueError: sharpness max_iter must be an integer in [1, 100000]; got 1000000000
    """
    # inf would stop after one matvec and call any start vector's Rayleigh quotient "converged"
    # tol=1 (or 2) called a start converged whose value was off by its own size: a bound of 1 says nothing
    real_tol = check_real(owner, "tol", tol, low=0.0, high=1.0, low_open=True, high_open=True)
    # max_iter=10**9 was taken: a solve that never converges ran until killed
    return (real_tol, check_integer(owner, "max_iter", max_iter, high=MAX_PRODUCTS),
            check_max_basis(max_basis, owner=owner))


def check_max_basis(max_basis, *, owner: str = "sharpness") -> int | None:
    """``max_basis`` as None or an int >= 2 (Krylov vectors kept); a ValueError naming ``owner``
    otherwise (``"5"`` failed inside the solver, "'<' not supported", and ``2.5`` was taken).

    >>> check_max_basis(None), check_max_basis(4)
    (None, 4)
    """
    return check_integer(owner, "max_basis", max_basis, low=2, optional=True)
