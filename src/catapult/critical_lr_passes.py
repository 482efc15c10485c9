"""The forward passes of :func:`catapult.critical_lr.critical_lr`: ``L0`` and its gradient (one process,
the union of the ranks' shards, a model sharded by FSDP2), and the side-effect-free forward passes
its trials and :func:`probe_loss` run (:class:`ModelSnapshot`: buffers and RNG put back).

The public names here are importable from :mod:`catapult.critical_lr` as before.
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from catapult.curvature import distributed as dist_ops
from catapult.curvature.grads_into import refuse_complex
from catapult.curvature.sharded import ShardedHessianOperator, is_sharded
from catapult.curvature.stateless import (AttributesKept, RenormedCopies, batch_versions, functional_loss,
                                          refuse_batch_written)
from catapult.curvature.torch_errors import functions_without_backward, is_reentrant_error, no_backward_error

__all__ = ["NonFiniteLossError", "ModelSnapshot", "probe_loss"]


class NonFiniteLossError(ValueError):
    """:func:`~catapult.critical_lr.critical_lr` was asked about parameters whose loss is not finite: there is no
    critical learning rate to find (a training run at them diverges before its first update).
    A ``ValueError``, so code that caught that before still does.

    Example (a weight of ``inf``: the loss is ``nan``):
        >>> from catapult.critical_lr import critical_lr
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.constant_(model.weight, float("inf"))
        >>> batch = (torch.zeros(2, 1), torch.ones(2, 1))
        >>> try:
        ...     critical_lr(model, torch.nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))
        ... except NonFiniteLossError as err:
        ...     print(type(err).__mro__[1].__name__, "-", str(err)[:42])
        ValueError - critical_lr: the loss at the current param
    """


# --------------------------------------------------------------------------------------------
# Side-effect-free forward passes
# --------------------------------------------------------------------------------------------
class ModelSnapshot:
    """What a trial forward pass may change besides parameters -- buffers and the RNG -- kept
    so it can be put back before every trial (same dropout masks, same BatchNorm statistics for
    each evaluation) and at the end. Forward passes should run on :meth:`buffer_copies` (through
    ``torch.func.functional_call``): the model's own buffers are then never written, so their
    version counters do not move and a graph the caller holds (BatchNorm saves its running
    statistics for backward) stays valid; :meth:`restore` writes a buffer only if it changed.

    The RNG state saved is the CPU generator's, and every CUDA device's when the model has a
    tensor on CUDA. Plain Python attributes that a custom module mutates in ``forward`` are not
    covered here (:func:`~catapult.critical_lr.critical_lr` puts back the tensors a forward rebinds, a carried state, with
    :class:`~catapult.curvature.stateless.AttributesKept`).

    Example (a train-mode BatchNorm forward moves its running mean; restore puts it back):
        >>> bn = torch.nn.BatchNorm1d(1)
        >>> snapshot = ModelSnapshot(bn)
        >>> _ = bn(torch.tensor([[1.0], [3.0]]))
        >>> bn.running_mean                     # 0.1 * batch mean 2
        tensor([0.2000])
        >>> snapshot.restore()
        >>> bn.running_mean
        tensor([0.])
    """

    def __init__(self, model: torch.nn.Module):
        self.named_buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.buffers = [(b, self.named_buffers[name]) for name, b in model.named_buffers()]
        self.cpu_rng = torch.get_rng_state()
        on_cuda = any(t.is_cuda for t in model.parameters()) or any(b.is_cuda for b, _ in self.buffers)
        self.cuda_rng = torch.cuda.get_rng_state_all() if on_cuda else None
        self.host_rng = np.random.get_state(), random.getstate()   # a forward drawing np.random / random

    def buffer_copies(self) -> dict[str, Tensor]:
        """Fresh copies of the buffers as they were, by name (for ``functional_call``)."""
        return {name: b.clone() for name, b in self.named_buffers.items()}

    @torch.no_grad()
    def restore(self) -> None:
        """Put buffers (those that changed) and RNG state (torch's, NumPy's global, ``random``'s) back, bitwise."""
        for buf, saved in self.buffers:
            if not torch.equal(buf, saved):
                buf.copy_(saved)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        np.random.set_state(self.host_rng[0])
        random.setstate(self.host_rng[1])


def forward_loss(model: torch.nn.Module, loss_fn: Callable, batch: Sequence,
                  tensors: dict[str, Tensor], renorm: RenormedCopies | None = None) -> Tensor:
    """``loss_fn(model(inputs), targets)`` with the model's ``tensors`` (buffers, parameters)
    replaced by those given, by name, through the loss too (a loss_fn that reads the model's
    weight itself saw the model's own at the trial steps: a critical lr of 8.19 for 10.24); under
    ``renorm`` where given (an ``F.embedding(max_norm=)`` call in the forward wrote the model's weight
    rows in place: it gets a copy)."""
    inputs, targets = batch
    with renorm if renorm is not None else contextlib.nullcontext():
        return functional_loss(model, tensors, inputs, loss_fn, targets)


def probe_loss(model: torch.nn.Module, loss_fn: Callable, batch: Sequence) -> float:
    """``L(theta)`` on ``batch`` -- one forward pass in the model's current mode, under ``torch.no_grad`` --
    leaving buffers, the global RNG state and a state the forward carries (``self.h = h.detach()``) as they were.

    Example (``w = 0``: the loss is ``mean(y^2)``):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [2.0]]))
        >>> probe_loss(model, torch.nn.MSELoss(), batch)
        2.5
    """
    snapshot = ModelSnapshot(model)
    try:
        with torch.no_grad(), AttributesKept().watch(model):   # (each training step's probe moved it on)
            return float(forward_loss(model, loss_fn, batch, snapshot.buffer_copies(), RenormedCopies()))
    finally:
        snapshot.restore()


# --------------------------------------------------------------------------------------------
# L0 and its gradient
# --------------------------------------------------------------------------------------------
def shard_reducer(model, loss_fn, batch):
    """``loss -> sum_r w_r loss_r`` over the ranks (``.weight`` = this rank's ``w_r``:
    :func:`~catapult.curvature.distributed.union_weight`)."""
    dist_ops.require_process_group()
    dist_ops.check_shardable(model)
    inner = dist_ops.unwrap_ddp(model)
    device = next(inner.parameters()).device
    # telling a mean from a sum runs forward passes of the shard and its halves: they are spent too
    calls = []
    counter = inner.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        weight = dist_ops.union_weight(model, loss_fn, batch, device, testable=not is_sharded(model))
    finally:
        counter.remove()

    def reduce(value: Tensor) -> float:
        t = value.detach().to(torch.float64).reshape(1).mul(weight)
        return float(dist_ops.all_reduce_sum(t))

    reduce.weight = weight
    reduce.passes = len(calls)
    return reduce


#: What a loss through a custom Function without a backward lacks here (no_backward_error).
_STEP_NEEDS = "the search's step needs"


def loss_and_gradient(model, loss_fn, batch, params, snapshot, reduce, renorm: RenormedCopies | None = None,
                       kept: AttributesKept | None = None) -> tuple[float, list]:
    """``L0`` and this batch's gradient by ``params`` (the union's, with ``reduce``): one forward
    and backward pass through ``functional_call``, so ``.grad`` and the buffers are not touched
    (under ``renorm``, as :func:`forward_loss`; a state the forward carries in a plain attribute
    found by, and put back through, ``kept``: the trials each saw it moved on, 1.5528 for 1.5648)."""
    with torch.enable_grad(), kept.watch(model) if kept is not None else contextlib.nullcontext():
        versions = batch_versions(batch)   # a forward that writes the batch moves every trial's (stateless.py)
        loss = forward_loss(model, loss_fn, batch, snapshot.buffer_copies(), renorm)
        refuse_batch_written(versions, batch, "critical_lr")
        if not (torch.is_tensor(loss) and loss.numel() == 1):
            raise ValueError("critical_lr: loss_fn must return a scalar tensor, got "
                             + (f"shape {tuple(loss.shape)}" if torch.is_tensor(loss)
                                else type(loss).__name__))
        refuse_complex(loss, "critical_lr")   # float() of it: "value cannot be converted to type double ..."
        loss0 = float(loss.detach()) if reduce is None else reduce(loss.detach())
        _check_finite_start(loss0)
        if not loss.requires_grad and reduce is None:
            raise ValueError("critical_lr: the loss does not depend on any parameter of "
                             "the optimizer")
        try:
            grads = (torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad
                     else [None] * len(params))
        except (RuntimeError, NotImplementedError) as err:
            # a custom Function without a backward (torch's raw NotImplementedError was all it said)
            missing = functions_without_backward(loss) if isinstance(err, NotImplementedError) else []
            if (refusal := no_backward_error("critical_lr", err, missing, _STEP_NEEDS)) is not None:
                raise refusal from err
            if is_reentrant_error(err):   # torch's message, raw, was all it said
                raise ValueError("critical_lr: the model calls torch.utils.checkpoint with use_reentrant=True, "
                                 "whose backward cannot be taken with respect to chosen tensors (autograd.grad), "
                                 "as the gradient here is without touching .grad: pass use_reentrant=False") from err
            raise
    # an nn.Embedding(sparse=True) gives a sparse gradient, which the update rules' arithmetic
    # refused ("Could not run 'aten::ne.Scalar' with arguments from the 'SparseCPU' backend")
    grads = [g.to_dense() if g is not None and g.is_sparse else g for g in grads]
    if reduce is not None:
        # a parameter this rank's shard leaves unused (an expert none of its samples is routed
        # to) has no gradient here but may have one on another rank: every rank all-reduces the
        # same tensors (a skipped one paired the next collectives wrongly: gloo aborted), and a
        # gradient is None only where no rank used the parameter
        used = dist_ops.all_reduce_sum(torch.tensor([float(g is not None) for g in grads], dtype=torch.float64,
                                                    device=loss.device)).tolist()
        grads = [None if not u else dist_ops.all_reduce_sum((torch.zeros_like(p) if g is None else g)
                                                            .mul(reduce.weight))
                 for p, g, u in zip(params, grads, used)]
    return loss0, list(grads)


def sharded_loss_and_gradient(model, loss_fn, batch, params, weight: float, kept: AttributesKept) -> tuple[float, list]:
    """``L0`` and the gradient by ``params`` of the union's loss for a model sharded by FSDP2, from its own forward
    and backward (:class:`~catapult.curvature.sharded.ShardedHessianOperator`, which leaves ``.grad`` as it was, and
    a state the forward carries found into ``kept``); the gradients are ``DTensor`` shards like the parameters."""
    # (forms=False: the gradient the optimizer steps with, an embedding's scale_grad_by_freq included, as unsharded)
    try:
        op = ShardedHessianOperator(model, loss_fn, batch, weight, vectors="local", forms=False, kept=kept)
    except NotImplementedError as err:   # a custom Function without a backward: torch's raw error
        names = getattr(err, "functions_without_backward", ())   # (found in the graph by the operator)
        if (refusal := no_backward_error("critical_lr", err, names, _STEP_NEEDS)) is not None:
            raise refusal from err
        raise
    _check_finite_start(op.loss)
    by_param = {id(p): g for p, g in op.gradients()}
    return op.loss, [by_param.get(id(p)) for p in params]


def _check_finite_start(loss0: float) -> None:
    if not math.isfinite(loss0):
        raise NonFiniteLossError(f"critical_lr: the loss at the current parameters is {loss0}; "
                                 "a critical learning rate needs a finite starting loss")
