"""A solve's start: the arguments every eigen-solver checks, its start vector, and for an
operator on vectors split over the ranks (a model sharded by FSDP2,
:mod:`catapult.curvature.sharded`) the ``reduce`` and ``dimension`` the solvers then take.
Shared by :mod:`~catapult.curvature.sharpness` and :mod:`~catapult.curvature.spectrum`.
"""
from __future__ import annotations

import math

import torch

from catapult.curvature import distributed as dist_ops

__all__ = ["check_solver_args", "start_vector", "initial_vector", "split_operator", "solver_split"]


def start_vector(init, n: int, dtype: torch.dtype, device: torch.device, seed: int):
    """The solver's start vector: a copy of ``init`` flattened and cast (checked: finite,
    non-zero, one entry per trainable parameter entry; never ``init``'s memory, which the solvers
    and ``distributed``'s broadcast write into), or a standard normal vector seeded with ``seed``.

    >>> start_vector(torch.tensor([[1.0, 2.0]]), 2, torch.float64, torch.device("cpu"), 0)
    tensor([1., 2.], dtype=torch.float64)
    >>> start_vector(None, 3, torch.float32, torch.device("cpu"), 0).shape
    torch.Size([3])
    """
    if init is None:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        return torch.randn(n, generator=gen, dtype=dtype, device=device)
    if not torch.is_tensor(init):
        raise TypeError(f"init must be a flat tensor (e.g. a previous est.vector), got "
                        f"{type(init).__name__}")
    if init.numel() != n:
        raise ValueError(f"init has {init.numel()} elements but the model has {n} trainable "
                         f"parameter entries")
    v0 = init.detach().reshape(-1).to(device=device, dtype=dtype, copy=True)
    norm = float(torch.linalg.vector_norm(v0))
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError("init must be finite and non-zero")
    return v0


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


def initial_vector(op, init, seed: int, distributed: bool) -> torch.Tensor:
    """The start vector for a solve on ``op``, in its coordinates (a copy either way): this
    rank's part for an operator on vectors split over the ranks (``op.local``, or that of the
    operator a pre-conditioned one wraps:
    :meth:`~catapult.curvature.sharded.ShardedHessianOperator.start_vector`), else
    :func:`start_vector`, with ``distributed`` rank 0's ``init`` on every rank.

    >>> from catapult.curvature.sharpness import build_operator
    >>> H = build_operator(torch.nn.Linear(2, 1, bias=False), torch.nn.MSELoss(), (torch.eye(2), torch.zeros(2, 1)))
    >>> initial_vector(H, torch.tensor([3.0, 4.0]), 0, distributed=False)
    tensor([3., 4.])
    """
    split = split_operator(op)
    if split is not None:
        return split.start_vector(init, seed)
    if not distributed:
        return start_vector(init, op.numel, op.dtype, op.device, seed)
    # rank 0's init decides for every rank (an init given on rank 0 only deadlocked: rank 0
    # broadcast while the others went on to their first product's all-reduce)
    from_rank0 = dist_ops.rank0_flag(init is not None, op.device)
    v0 = dist_ops.agreed(lambda: start_vector(init if from_rank0 else None, op.numel, op.dtype, op.device, seed),
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


def check_solver_args(tol, max_iter):
    """Raise a ValueError unless ``tol`` is finite and > 0 and ``max_iter`` an integer >= 1.

    >>> check_solver_args(1e-3, 10)
    >>> check_solver_args(0.0, 10)
    Traceback (most recent call last):
    ...
    ValueError: tol must be a finite number > 0, got 0.0
    """
    # inf would stop after one matvec and call any start vector's Rayleigh quotient "converged"
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < math.inf):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if not (isinstance(max_iter, int) and not isinstance(max_iter, bool) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
