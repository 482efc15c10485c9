"""Curvature across processes: each rank holds a shard of the batch; every quantity of the
union's loss is the shard-size-weighted sum of the shards' quantities, all-reduced.

For a loss that is a mean over samples (MSE, cross-entropy, token-mean LM losses), the loss on
the union ``B = B_1 + ... + B_R`` of the ranks' shards is ``L = sum_r w_r L_r`` with
``w_r = |B_r| / |B|``, so its gradient and Hessian-vector products are
``g = sum_r w_r g_r`` and ``H v = sum_r w_r H_r v``: one ``all_reduce(SUM)`` of ``w_r H_r v``
per product. Every rank then holds the same product, bit for bit (a collective returns one
result to all), so the same Lanczos iteration runs on every rank and every rank returns what
one process would return on the union (up to the summation order of the reduction).

A DistributedDataParallel wrapper is unwrapped (``model.module``): its parameters are the
wrapped module's, and its forward hooks would expect a ``loss.backward()`` that the HVPs never
call.
"""
from __future__ import annotations

import torch

__all__ = ["require_process_group", "unwrap_ddp", "shard_weight", "all_reduce_sum",
           "DistributedOperator", "broadcast_vector"]


def require_process_group() -> None:
    """Raise a ValueError unless a ``torch.distributed`` process group is initialised."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs an initialised torch.distributed process group "
                         "(torch.distributed.init_process_group) on every rank")


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """``model.module`` for a DistributedDataParallel wrapper, else ``model``."""
    from torch.nn.parallel import DistributedDataParallel
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks, in place (returned for chaining)."""
    import torch.distributed as dist
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agreed_minimum(value: int, device=None) -> int:
    """The smallest ``value`` over the ranks (every rank must call it): settings each rank sizes
    from its own shard, such as the lean Krylov basis, must agree, or the ranks' product counts
    (each an all-reduce) would differ and the collective calls would not pair up."""
    import torch.distributed as dist
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def shard_weight(batch, device=None) -> float:
    """``w_r = |B_r| / |B|``: this rank's share of the union's samples (dim 0 of the inputs).

    Gathered with one all-reduce of the shard sizes; every rank must call it.
    """
    inputs = batch[0]
    if not (torch.is_tensor(inputs) and inputs.dim() >= 1):
        raise ValueError("distributed=True needs the batch's inputs to be a tensor with a sample "
                         "dimension (dim 0), to weight the shards by their sizes")
    local = int(inputs.shape[0])
    total = all_reduce_sum(torch.tensor([float(local)], dtype=torch.float64, device=device))
    if not float(total) > 0:
        raise ValueError("distributed=True: the shards hold no samples")
    return local / float(total)


def broadcast_vector(v: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``v`` on every rank (so a warm start agrees everywhere), in place."""
    import torch.distributed as dist
    dist.broadcast(v, src=0)
    return v


class DistributedOperator:
    """``v -> sum_r w_r H_r v`` over the ranks, from this rank's operator ``H_r``.

    ``op`` is a local :class:`~catapult.curvature.HessianOperator` (or any operator with
    ``numel``, ``dtype``, ``device``, ``loss`` and ``gradient()``); ``weight`` is this rank's
    :func:`shard_weight`. ``loss`` and ``gradient()`` are reduced the same way.
    """

    def __init__(self, op, weight: float):
        self.op, self.weight = op, float(weight)
        self.numel, self.dtype, self.device = op.numel, op.dtype, op.device
        self.names = getattr(op, "names", None)
        self._grad = None
        loss = torch.tensor([op.loss * self.weight], dtype=torch.float64, device=op.device)
        self.loss = float(all_reduce_sum(loss))

    @property
    def matvecs(self) -> int:
        return self.op.matvecs

    def gradient(self) -> torch.Tensor:
        if self._grad is None:
            self._grad = all_reduce_sum(self.op.gradient().mul(self.weight))
        return self._grad

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(self.op(v).mul_(self.weight))
