"""A model that carries a state to its next forward in a plain attribute (``self.h = h.detach()``) under
``distributed=True``: 2 CPU processes on gloo over loopback, each with its shard, must measure the union's
curvature and critical lr at the state the model had (the dense Hessian and the one-process search of the
model with that state fixed), and leave the model holding it: unsharded (the forwards that tell a mean loss
from a sum, ``distributed._shard_reduction``) and sharded by FSDP2 (those of ``_sharded_shard_reduction`` and
of ``ShardedHessianOperator``, and the critical lr's trials)."""
import copy

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import catapult
from dense_curvature import dense_hessian
from gloo_ranks import on_ranks
from torch_features import FSDP2
from test_stateful_forward_curvature import AtState, Carries, MemoryAt, memory_problem

pytestmark = [pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built"),
              pytest.mark.slow]   # two spawned interpreters importing torch

SHARDS = (3, 5)   # unequal: the union's weights are the shards' sizes
RNN_SHARDS = (1, 7)   # one sample on rank 0 (told from the sample twice over), halves on rank 1


def truths():
    """The union's top eigenvalue and critical lr (SGD) at the state the model had, in one process."""
    model, batch = memory_problem(sum(SHARDS))
    fixed = MemoryAt(copy.deepcopy(model), model.h.clone())
    top = float(np.linalg.eigvalsh(dense_hessian(fixed, nn.MSELoss(), batch).numpy())[-1])
    lr = catapult.critical_lr(fixed, nn.MSELoss(), batch, torch.optim.SGD(fixed.parameters(), lr=0.1),
                              rtol=1e-3).lr
    return top, lr


def measures(rank, world, sharded):
    model, (x, y) = memory_problem(sum(SHARDS))   # every rank: the same state, from the same batch
    if sharded:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.inp)
        fully_shard(model)
    state = model.h
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    out = {}
    for name, call in (("sharpness", lambda: catapult.sharpness(model, nn.MSELoss(), shard, tol=1e-10,
                                                                distributed=True).value),
                       ("critical_lr", lambda: catapult.critical_lr(model, nn.MSELoss(), shard,
                                                                    torch.optim.SGD(model.parameters(), lr=0.1),
                                                                    rtol=1e-3, distributed=True).lr)):
        try:
            out[name] = call()
        except ValueError as err:
            out[name] = str(err)
        out[f"{name}_kept"] = model.h is state
    return out


@pytest.mark.parametrize("sharded", [False, pytest.param(True, marks=FSDP2)], ids=["unsharded", "fsdp2"])
def test_a_model_is_measured_at_its_state_on_every_rank(sharded):
    # unsharded: the forwards that tell a mean loss from a sum (on the shard and its halves) moved the
    # state: each half saw another one, so MSELoss was refused as 'neither a mean nor a sum' (sharpness
    # and critical_lr alike), and the model was left a few forwards on.
    # FSDP2: the forward that tells a mean from a sum and every forward of the differences moved the state
    # on, so the products saw another state each: refused as kinks ('the forward and backward differences
    # differ by 2.4'), and the model was left many forwards on; critical_lr's trials each saw the state
    # moved on by the one before: 2e-4 on 2 ranks (1.0312 in one) for the 1.1192 of the state fixed
    top, lr = truths()
    for got in on_ranks(measures, sharded):
        assert got["sharpness"] == pytest.approx(top, rel=1e-7)
        assert got["critical_lr"] == pytest.approx(lr, rel=1e-9)
        assert got["sharpness_kept"] and got["critical_lr_kept"]


def rnn_problem():
    """An RNN whose carried state is shaped by the batch, ``(1, samples, 6)``, at a state not zero; its
    union's batch (8 samples) and state."""
    torch.manual_seed(0)
    model = Carries().double()
    model.h = torch.zeros(1, sum(RNN_SHARDS), 6, dtype=torch.float64)
    with torch.no_grad():
        model(torch.randn(sum(RNN_SHARDS), 5, 3, dtype=torch.float64))   # a batch trained before
    return model, (torch.randn(sum(RNN_SHARDS), 5, 3, dtype=torch.float64),
                   torch.randn(sum(RNN_SHARDS), 2, dtype=torch.float64))


def rnn_measures(rank, world):
    model, (x, y) = rnn_problem()
    lo = sum(RNN_SHARDS[:rank])
    model.h = model.h[:, lo:lo + RNN_SHARDS[rank]].clone()   # each rank's state: its samples' rows
    state = model.h
    shard = (x[lo:lo + RNN_SHARDS[rank]], y[lo:lo + RNN_SHARDS[rank]])
    out = {}
    for name, call in (("sharpness", lambda: catapult.sharpness(model, nn.MSELoss(), shard, tol=1e-10,
                                                                distributed=True).value),
                       ("sum", lambda: catapult.sharpness(model, nn.MSELoss(reduction="sum"), shard, tol=1e-10,
                                                          distributed=True).value),
                       ("critical_lr", lambda: catapult.critical_lr(model, nn.MSELoss(), shard,
                                                                    torch.optim.SGD(model.parameters(), lr=0.1),
                                                                    rtol=1e-3, distributed=True).lr)):
        try:
            out[name] = call()
        except (RuntimeError, ValueError) as err:
            out[name] = str(err)
        out[f"{name}_kept"] = model.h is state
    return out


def test_an_rnn_whose_state_is_shaped_by_the_batch_is_measured_on_every_rank():
    # telling a mean loss from a sum ran the model on each half of the shard, which a state of the
    # shard's size cannot run: torch's 'Expected hidden size (1, 2, 6), got [1, 3, 6]' on every call; a
    # model that needs its whole shard is told from the rows of one forward's output (as a sharded one).
    # A shard of one sample (rank 0) was compared with the sample twice over, a batch of 2 its state of
    # one row cannot run: torch's 'Expected hidden size (1, 2, 6), got [1, 1, 6]' reached the user on
    # rank 0 (and 'rank 0 raised an error' on rank 1) where the union's answer can be computed
    model, batch = rnn_problem()
    fixed = AtState(copy.deepcopy(model), model.h.clone())   # the union's state: the ranks' rows
    top = float(np.linalg.eigvalsh(dense_hessian(fixed, nn.MSELoss(), batch).numpy())[-1])
    top_sum = float(np.linalg.eigvalsh(dense_hessian(fixed, nn.MSELoss(reduction="sum"), batch).numpy())[-1])
    lr = catapult.critical_lr(fixed, nn.MSELoss(), batch, torch.optim.SGD(fixed.parameters(), lr=0.1), rtol=1e-3).lr
    for got in on_ranks(rnn_measures):
        assert got["sharpness"] == pytest.approx(top, rel=1e-7)
        assert got["sum"] == pytest.approx(top_sum, rel=1e-7)
        assert got["critical_lr"] == pytest.approx(lr, rel=1e-9)
        assert got["sharpness_kept"] and got["sum_kept"] and got["critical_lr_kept"]
