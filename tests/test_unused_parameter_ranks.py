"""A trainable parameter the union's loss never reaches (an unused LayerNorm) is out of the
pre-conditioned and lr-scaled operators across processes too (``distributed=True``, FSDP2), as
torch's step skips it: Adam's coupled L2 gave it the row ``wd / eps`` at a zero entry, SGD groups
decaying differently the row ``wd_i - wd_0``. The ranks agree on "unused": a branch the forward takes
on one rank's shard only is used (its rows stay). Truth: one process on the union of the shards,
with the model without the unused module and the same optimizer state, or the dense Hessian (SGD)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import catapult
from dense_curvature import dense_hessian
from gloo_ranks import on_ranks
from torch_features import FSDP2

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

LOSS = torch.nn.MSELoss()
N = 16   # rows 0..7 on rank 0 (the branch's rows among them), 8..15 on rank 1 (none of them)


class Kept(torch.nn.Module):
    """The body, and a branch taken for the rows whose first input is above 0.8."""

    def __init__(self, body, extra):
        super().__init__()
        self.body, self.extra = body, extra

    def forward(self, x):
        out = self.body(x)
        rows = x[:, :1] > 0.8
        if bool(rows.any()):   # (no rows: the branch is out of the graph)
            out = out + rows * self.extra(x)
        return out


class WithUnused(Kept):
    def __init__(self):
        torch.manual_seed(0)
        super().__init__(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)),
                         torch.nn.Linear(3, 1))
        self.unused = torch.nn.LayerNorm(2)   # bias 0, weight 1: never reached


def union():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, generator=gen, dtype=torch.float64)
    x[N // 2:, 0] = -x[N // 2:, 0].abs()   # rank 1's shard: none of the branch's rows
    x[0, 0] = 1.5                          # rank 0's: some
    return x, torch.randn(N, 1, generator=gen, dtype=torch.float64)


def shard(batch, rank, world):
    lo, hi = rank * N // world, (rank + 1) * N // world
    return batch[0][lo:hi], batch[1][lo:hi]


def adam(params):
    return torch.optim.Adam(params, lr=1e-3, weight_decay=0.01)


def radam(params):
    return torch.optim.RAdam(params, lr=1e-3, weight_decay=0.01)


def sgd_groups(model):
    """The unused module's group decays by 50, the branch's by 2 (the body's 0): rows 50 and 2."""
    groups = [{"params": list(model.body.parameters())}, {"params": list(model.extra.parameters()), "weight_decay": 2.0}]
    if hasattr(model, "unused"):
        groups.append({"params": list(model.unused.parameters()), "weight_decay": 50.0})
    return torch.optim.SGD(groups, lr=1e-3)


def trained(make, steps=10):
    model = WithUnused().double()
    batch = union()
    opt = make(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        opt.step()
    return model, batch, opt


def kept_optimizer(opt, model, make):
    """``make``'s optimizer over the body and the branch (the first 6 parameters), holding the same state."""
    kept = Kept(model.body, model.extra)
    other = make(kept.parameters())
    saved = opt.state_dict()
    other.load_state_dict({"state": {i: saved["state"][i] for i in range(6) if i in saved["state"]},
                           "param_groups": [dict(saved["param_groups"][0], params=list(range(6)))]})
    return kept, other


def measured_on_ranks(rank, world):
    out = {}
    for name, make in (("adam", adam), ("radam", radam)):
        model, batch, opt = trained(make)
        out[name] = catapult.preconditioned_sharpness(model, LOSS, shard(batch, rank, world), opt, tol=1e-12,
                                                      max_iter=200, distributed=True).value
    model, batch = WithUnused().double(), union()
    out["sgd"] = catapult.top_eigenpairs(model, LOSS, shard(batch, rank, world), k=1, tol=1e-12, optimizer=sgd_groups(model),
                                         scale_by_group_lr=True, distributed=True).values[0]
    return out


@pytest.mark.slow  # two spawned interpreters importing torch
def test_ranks_leave_out_a_parameter_no_shard_reaches_and_keep_one_some_shard_reaches():
    # before: Adam read the unused LayerNorm's wd/eps rows (1e7 for tens), SGD its 50; RAdam's rectified
    # step was refused ('part momentum SGD, part Adam's': the unused one was never stepped)
    ranks = on_ranks(measured_on_ranks)
    want = {}
    for name, make in (("adam", adam), ("radam", radam)):
        model, batch, opt = trained(make)
        kept, kept_opt = kept_optimizer(opt, model, make)
        want[name] = catapult.preconditioned_sharpness(kept, LOSS, batch, kept_opt, tol=1e-12, max_iter=200).value
    model = WithUnused().double()
    kept = Kept(model.body, model.extra)
    rows = np.array([0.0] * sum(p.numel() for p in model.body.parameters()) + [2.0] * 4)   # the branch's 4 entries
    want["sgd"] = float(np.linalg.eigvalsh(dense_hessian(kept, LOSS, union()).numpy() + np.diag(rows))[-1])
    assert want["sgd"] < 10 and want["adam"] < 1e3
    for got in ranks:
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-9), name


def fsdp_measured(rank, world):
    from torch.distributed.fsdp import fully_shard

    model = WithUnused().double()
    model.extra.requires_grad_(False)   # FSDP2 reduces the gradients it has: a branch on one rank's rows only would not match
    fully_shard(model.body)
    fully_shard(model)
    batch = union()
    x, y = shard(batch, rank, world)
    opt = adam([p for p in model.parameters() if p.requires_grad])
    for _ in range(3):   # the mean of the ranks' mean gradients: the union's (equal shards)
        opt.zero_grad()
        LOSS(model(x), y).backward()
        opt.step()
    out = {"adam": catapult.preconditioned_sharpness(model, LOSS, (x, y), opt, tol=1e-12, max_iter=200,
                                                     distributed=True).value}
    sgd = torch.optim.SGD([{"params": list(model.body.parameters())},
                           {"params": list(model.unused.parameters()), "weight_decay": 50.0}], lr=1e-3)
    out["sgd"] = catapult.top_eigenpairs(model, LOSS, (x, y), k=1, tol=1e-12, optimizer=sgd, scale_by_group_lr=True,
                                         distributed=True).values[0]
    return out


@FSDP2
@pytest.mark.slow
def test_fsdp2_leaves_out_a_parameter_the_loss_never_reaches():
    ranks = on_ranks(fsdp_measured)
    model = WithUnused().double()
    model.extra.requires_grad_(False)
    batch = union()
    opt = adam(list(model.body.parameters()))
    for _ in range(3):
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        opt.step()
    kept = Kept(model.body, model.extra)   # trainable: the body alone
    want = {"adam": catapult.preconditioned_sharpness(kept, LOSS, batch, opt, tol=1e-12, max_iter=200).value,
            "sgd": float(np.linalg.eigvalsh(dense_hessian(kept, LOSS, batch).numpy())[-1])}
    for got in ranks:   # float64 central differences of FSDP's gradient
        assert got["adam"] == pytest.approx(want["adam"], rel=1e-7)
        assert got["sgd"] == pytest.approx(want["sgd"], rel=1e-7)
