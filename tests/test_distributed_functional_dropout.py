"""``distributed=True`` on a model whose forward calls ``F.dropout`` itself (no Dropout module whose
mode could be switched): with ``training=True`` each rank draws its masks, as with a train-mode
Dropout module (the answer is the union's for those masks; truth: each rank's dense Hessian
for its mask, summed over the ranks); with ``training=False`` it is the single process's answer on
the union."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from dense_curvature import dense_hessian
from gloo_ranks import on_ranks

import catapult

SHARDS = (10, 6)


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.second(F.dropout(torch.tanh(self.first(x)), 0.5, training=self.training))


def problem():
    torch.manual_seed(0)
    model = FunctionalDropout().double()
    x = torch.randn(sum(SHARDS), 3, dtype=torch.float64)
    y = torch.randn(sum(SHARDS), 2, dtype=torch.float64)
    return model, (x, y)


def measured(rank, world):
    model, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    out = {}
    for reduction in ("mean", "sum"):
        loss_fn = nn.MSELoss(reduction=reduction)
        torch.manual_seed(7)
        est = catapult.sharpness(model, loss_fn, shard, tol=1e-10, distributed=True)
        after = torch.rand(3)
        torch.manual_seed(7)
        out[f"{reduction}_rng_kept"] = torch.equal(after, torch.rand(3))   # the caller's stream untouched
        # truth: this rank's dense Hessian for the mask the operator draws (seed 0, one forward)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            local = dense_hessian(model, loss_fn, shard)
        weight = SHARDS[rank] / sum(SHARDS) if reduction == "mean" else 1.0
        union = weight * local
        dist.all_reduce(union)
        out[reduction] = est.value
        out[f"{reduction}_truth"] = float(torch.linalg.eigvalsh(union)[-1])
    model.eval()
    out["eval"] = catapult.sharpness(model, nn.MSELoss(), shard, tol=1e-10, distributed=True).value
    out["top2_eval"] = catapult.top_eigenpairs(model, nn.MSELoss(), shard, k=2, tol=1e-10, distributed=True).values
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_f_dropout_with_training_true_is_measured_like_a_dropout_module():
    # before: refused on every rank, "loss_fn is neither a mean nor a sum over samples", where
    # the same model with an nn.Dropout was measured
    model, batch = problem()
    model.eval()
    single = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10).value
    top2 = catapult.top_eigenpairs(model, nn.MSELoss(), batch, k=2, tol=1e-10).values
    for res in on_ranks(measured, timeout_s=90.0):
        for reduction in ("mean", "sum"):
            assert res[reduction] == pytest.approx(res[f"{reduction}_truth"], rel=1e-8), reduction
            assert res[f"{reduction}_rng_kept"], reduction
        assert res["eval"] == pytest.approx(single, rel=1e-8)
        np.testing.assert_allclose(res["top2_eval"], top2, rtol=1e-8)


def test_every_functional_dropout_is_taken_off_for_the_reduction_test():
    from catapult.curvature.microbatch import functional_masks_off

    torch.manual_seed(0)
    x, q = torch.randn(2, 3, 4, 4), torch.randn(1, 5, 8)
    calls = {
        "F.dropout": lambda: F.dropout(x, 0.5, training=True),
        "F.dropout2d": lambda: F.dropout2d(x, p=0.5, training=True),
        "F.alpha_dropout": lambda: F.alpha_dropout(x, 0.5, True),
        "torch.dropout": lambda: torch.dropout(x, 0.5, True),   # the torch namespace's, not F's
        "torch.feature_dropout": lambda: torch.feature_dropout(x, 0.5, True),
    }
    with functional_masks_off():
        for name, call in calls.items():
            assert torch.equal(call(), x), name
        attended = F.scaled_dot_product_attention(q, q, q, dropout_p=0.9)
    assert torch.allclose(attended, F.scaled_dot_product_attention(q, q, q))



def hinge(out, y):
    return torch.relu(1.0 - y * out).mean()


def zero_shard(rank, world):
    # rank 1's targets are far on the side of the model's outputs without dropout: its hinge loss is 0
    # there and nearby, so the dropout-free retry of its reduction test says "both" (it cannot tell),
    # like a shard whose loss is 0 outright, while its masks make the loss it measures nonzero
    model, (x, y) = problem()
    with torch.no_grad():
        model.eval()
        far = 1e3 * torch.sign(model(x))
        model.train()
    y = torch.where(torch.arange(len(y))[:, None] >= SHARDS[0], far, torch.sign(y))
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    est = catapult.sharpness(model, hinge, shard, tol=1e-10, distributed=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        local = dense_hessian(model, hinge, shard)
        torch.manual_seed(0)
        masked = float(hinge(model(shard[0]), shard[1]))
    union = SHARDS[rank] / sum(SHARDS) * local
    dist.all_reduce(union)
    return {"value": est.value, "truth": float(torch.linalg.eigvalsh(union)[-1]), "masked": masked,
            "local": float(torch.linalg.matrix_norm(local))}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_shard_whose_loss_is_zero_without_dropout_follows_the_others():
    # before: rank 1 refused, "loss_fn is neither a mean nor a sum over samples on this rank's shard",
    # where a shard whose loss is 0 with no dropout at all follows the other ranks
    ranks = on_ranks(zero_shard, timeout_s=90.0)
    assert ranks[1]["masked"] > 0 and ranks[1]["local"] > 0   # rank 1's curvature counts in the union's
    for res in ranks:
        assert res["value"] == pytest.approx(res["truth"], rel=1e-8)
