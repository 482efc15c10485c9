"""Fully sharded data parallelism for ``catapult train-ddp`` (``train.fsdp: true``), for a model
bigger than one device.

FSDP2's ``fully_shard`` is applied to every transformer block and then to the whole GPT (its
embeddings, final norm and head), before the optimizer is built. Each of the ``W`` ranks then
holds ``1/W`` of every parameter, of its gradient and of its Adam moments. A block's full weights
exist only while its forward or backward runs (all-gathered, then freed again). Gradients are
reduce-scattered as means over the ranks, so each rank takes its part of the step one process
takes on the union batch: the batches, losses and logged means are
:mod:`~catapult.engine.distributed`'s, and ``tests/test_fsdp.py`` checks the losses and weights
against one process. ``model.pt`` holds the full weights, gathered to rank 0, the same file as
an unsharded run's.

Sharpness is tracked on the shards (``eval.sharpness_every``, ``"<c>/lambda0"`` learning rates,
the spectrum columns): :mod:`catapult.curvature.sharded` takes its Hessian-vector products as
central differences of FSDP's own gradient, the union batch's, the same on every rank. Those
need a loss without kinks at the difference step: a ReLU GPT is measured in float64 only
(``model.activation``), and the solver keys that do not apply (``eval.sharpness_hvp``,
``eval.sharpness_dtype``, ``eval.sharpness_chunk_size``) are ConfigErrors too.

The catapult warmup's critical-lr search runs on the shards too (each trial moves every rank's
rows of the parameters in place, :func:`catapult.critical_lr`).

What is not run sharded, each a ConfigError naming its key before any work:

* dynamic sparsity (``model.sparsity.method`` rigl or gmp): its masks are dense tensors that are
  updated from the dense gradient of each full matrix (static masks are fine: they are
  applied to the gathered weights);
* ``train.compile``.

Every rank evaluates as many validation windows (FSDP's forward is a collective), so the
held-out windows are rounded down to a multiple of ``W``.

The loop's side of it is :class:`catapult.engine.distributed.FullyShardedDataParallel` (it
lives beside :class:`~catapult.engine.distributed.DataParallel`, which it extends, and which
:func:`~catapult.engine.distributed.train_ddp` picks from): the forward goes through the model
itself, an evaluation reshards the weights it gathered, and the final weights come from
:func:`full_state_dict`. This module holds what does not depend on the loop.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from catapult import config as cfg
from catapult.config.checks import kink_problems
from catapult.config.lr import lr_needs_lambda0

__all__ = ["check_fsdp", "shard_model", "full_state_dict"]


def check_fsdp(config: Mapping[str, Any], distributed: bool) -> None:
    """Nothing if ``config`` does not ask for ``train.fsdp``, or asks for it inside a process
    group with only what a sharded run does; else one ConfigError naming every key in the way.

    >>> check_fsdp(cfg.validate({}), distributed=False)   # unsharded: nothing to check
    >>> check_fsdp(cfg.validate({"train": {"fsdp": True}, "eval": {"sharpness_every": 0}}), distributed=False)
    Traceback (most recent call last):
    ...
    catapult.config.errors.ConfigError: train.fsdp: shards a model over the processes of catapult train-ddp started by torchrun; this run has none
    """
    if not config["train"]["fsdp"]:
        return
    problems = []
    if not _fsdp2_available():   # torch 2.2 - 2.5: shard_model's ImportError came mid-setup, in every rank
        problems.append(("train.fsdp", f"needs FSDP2 (torch.distributed.fsdp.fully_shard and torch.distributed.tensor, "
                                       f"torch 2.6 or later); this torch is {torch.__version__}: upgrade torch or "
                                       f"train unsharded (train.fsdp=false)"))
    if not distributed:
        problems.append(("train.fsdp", "shards a model over the processes of catapult train-ddp started by "
                                       "torchrun; this run has none"))
    ev = config["eval"]
    if ev["sharpness_every"] or lr_needs_lambda0(config["optimizer"]["lr"]):
        # what catapult.curvature.sharded refuses, named by key before any work
        problems += kink_problems(config, config["dtype"], "train.fsdp")
        if ev["sharpness_hvp"] not in ("auto", "finite_difference"):
            problems.append(("eval.sharpness_hvp", "use auto or finite_difference with train.fsdp: FSDP's hooks "
                                                   "run no double backward"))
        if ev["sharpness_dtype"] not in (None, config["dtype"]):
            problems.append(("eval.sharpness_dtype", f"leave it null with train.fsdp: the shards are measured in "
                                                     f"their own dtype, {config['dtype']}"))
        if ev["sharpness_chunk_size"] is not None:
            problems.append(("eval.sharpness_chunk_size", "leave it null with train.fsdp: FSDP already holds one "
                                                          "block's weights at a time"))
    if config["model"]["sparsity"]["method"] != "static":
        problems.append(("model.sparsity.method", "use static with train.fsdp: dynamic masks are updated from "
                                                  "each full matrix's dense gradient, and train.fsdp shards it"))
    if config["train"]["compile"]:
        problems.append(("train.compile", "is not combined with train.fsdp"))
    if problems:
        raise cfg.ConfigError(problems)


def _fsdp2_available() -> bool:
    """Whether this torch has FSDP2's public names (``fully_shard``, ``FSDPModule``, ``DTensor``)."""
    try:
        import torch.distributed.fsdp as fsdp
        import torch.distributed.tensor as tensor
    except ImportError:  # torch 2.2's torch.distributed.tensor is its tensor parallelism alone; a torch without distributed
        return False
    return hasattr(fsdp, "fully_shard") and hasattr(fsdp, "FSDPModule") and hasattr(tensor, "DTensor")


def shard_model(model: nn.Module) -> nn.Module:
    """``fully_shard`` each of ``model.blocks`` (the GPT's transformer blocks), then ``model``
    (its remaining parameters: embeddings, final norm, head), in place, on the default process
    group; returns ``model``, whose parameters are now ``DTensor`` shards. Build the optimizer
    after this.

    >>> from catapult.curvature.distributed import single_process_group
    >>> from catapult.models import GPT
    >>> with single_process_group():
    ...     gpt = shard_model(GPT(65, d_model=16, n_layers=1, n_heads=2, context=8))
    ...     type(gpt.wte.weight).__name__, tuple(gpt.wte.weight.shape), tuple(gpt(torch.zeros(1, 8, dtype=torch.long)).shape)
    ('DTensor', (65, 16), (1, 8, 65))
    """
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def full_state_dict(model: nn.Module) -> dict:
    """The full ``state_dict`` of a model sharded by :func:`shard_model`, gathered to rank 0 on
    the CPU (empty on the other ranks). A collective: every rank calls it.

    >>> from catapult.curvature.distributed import single_process_group
    >>> from catapult.models import GPT
    >>> with single_process_group():
    ...     weights = full_state_dict(shard_model(GPT(65, d_model=16, n_layers=1, n_heads=2, context=8)))
    >>> type(weights["wte.weight"]).__name__, tuple(weights["wte.weight"].shape)
    ('Tensor', (65, 16))
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
