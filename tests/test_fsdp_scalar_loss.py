"""A model sharded by FSDP2 that returns only its scalar loss (HF's ``outputs.loss``: the labels in
the input dict, targets None), under ``distributed=True`` on 2 gloo ranks. Its output has no sample
rows to halve, so no rank could tell a sum loss from a mean and a mean was taken: a summed loss's
sharpness came out at 1/2 the union's (silently). Truth: the dense float64 Hessian of the union's
loss, and one unsharded process's critical lr on the union."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import catapult
from dense_curvature import dense_hessian
from gloo_ranks import on_ranks
from test_nested_batch_curvature import Core   # the same 5-4-2 tanh MLP
from torch_features import FSDP2

pytestmark = [pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built"), FSDP2]


class LossInside(nn.Module):
    """HF style: ``{"x", "labels"}`` in, ``{"loss": ...}`` out (summed or averaged over samples)."""

    def __init__(self, core, reduction):
        super().__init__()
        self.core, self.reduction = core, reduction

    def forward(self, batch):
        return {"loss": nn.functional.mse_loss(self.core(batch["x"]), batch["labels"], reduction=self.reduction)}


def output_loss(out, _):
    return out["loss"]


def data(n):
    torch.manual_seed(0)
    core = Core().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return core, x, y


def sharded_measures(rank, world, rows):
    from torch.distributed.fsdp import fully_shard

    core, x, y = data(sum(rows))
    lo, hi = sum(rows[:rank]), sum(rows[:rank + 1])
    batch = ({"x": x[lo:hi], "labels": y[lo:hi]}, None)
    out = {}
    for reduction in ("sum", "mean"):
        model = LossInside(data(sum(rows))[0], reduction)
        fully_shard(model.core.l1)
        fully_shard(model)
        sharp = catapult.sharpness(model, output_loss, batch, tol=1e-10, distributed=True).value
        lr = catapult.critical_lr(model, output_loss, batch, torch.optim.SGD(model.parameters(), lr=0.1),
                                  lr_start=1e-3, rtol=1e-3, distributed=True).lr
        out[reduction] = (sharp, lr)
    return out


@pytest.mark.slow  # two spawned interpreters importing torch
@pytest.mark.parametrize("rows", [(7, 5), (1, 8)])
def test_a_sharded_model_returning_its_scalar_loss_is_measured_on_the_unions_loss(rows):
    # before: 'cannot tell' on every rank, a mean taken; the summed loss's sharpness was 1/2 the union's
    # (28.07 for 51.08 on shards of 7 and 5); a mean loss stays a mean
    core, x, y = data(sum(rows))
    ranks = on_ranks(sharded_measures, rows)
    for reduction in ("sum", "mean"):
        def union_loss(out, target):
            return nn.functional.mse_loss(out, target, reduction=reduction)

        top = float(torch.linalg.eigvalsh(dense_hessian(core, union_loss, (x, y)))[-1])
        model = LossInside(core, reduction)
        want_lr = catapult.critical_lr(model, output_loss, ({"x": x, "labels": y}, None),
                                       torch.optim.SGD(model.parameters(), lr=0.1), lr_start=1e-3, rtol=1e-3).lr
        for got in ranks:
            sharp, lr = got[reduction]
            assert sharp == pytest.approx(top, rel=1e-8), reduction   # float64 central differences of FSDP's gradient
            assert lr == pytest.approx(want_lr, rel=1e-6), reduction


class ScaledLossInside(nn.Module):
    """``{"x", "labels"}`` in, ``{"loss": scale x ...}`` out: a root-mean-square (no sum over samples) or
    a summed/averaged squared error."""

    def __init__(self, core, reduction, scale):
        super().__init__()
        self.core, self.reduction, self.scale = core, reduction, scale

    def forward(self, batch):
        diff = self.core(batch["x"]) - batch["labels"]
        if self.reduction == "rms":
            return {"loss": self.scale * (diff ** 2).mean().sqrt()}
        return {"loss": self.scale * nn.functional.mse_loss(diff, torch.zeros_like(diff), reduction=self.reduction)}


def tiny_or_fitted_measures(rank, world, rows):
    from torch.distributed.fsdp import fully_shard

    core, x, y = data(sum(rows))
    with torch.no_grad():
        fitted = core(x)   # targets the model fits exactly: the losses are rounding, or 0
    lo, hi = sum(rows[:rank]), sum(rows[:rank + 1])
    out = {}
    for reduction, exponent, targets in (("rms", -300, y), ("rms", 0, y), ("sum", 0, fitted), ("mean", 0, fitted)):
        model = ScaledLossInside(data(sum(rows))[0], reduction, 2.0 ** exponent)
        fully_shard(model.core.l1)
        fully_shard(model)
        before = [p.full_tensor().clone() for p in model.parameters()]
        try:
            got = catapult.sharpness(model, output_loss, ({"x": x[lo:hi], "labels": targets[lo:hi]}, None),
                                     tol=1e-10, distributed=True).value
        except ValueError as err:
            got = str(err)
        kept = all(torch.equal(p.full_tensor(), b) for p, b in zip(model.parameters(), before))
        out[f"{reduction}{exponent}"] = (got, kept)
    return out


@pytest.mark.slow  # two spawned interpreters importing torch
def test_tiny_and_exactly_fitted_scalar_losses_are_told_as_the_union_tells_them():
    # before: FSDP2's halves compared losses below 1e-30 as rounding ('cannot tell' on every rank, a mean
    # taken): 2**-300 x a root-mean-square gave a sharpness (3.87e-91; no sum over the ranks makes the
    # union's loss), and an exactly fitted summed loss was taken for a mean (1/2 the union's sharpness)
    rows = (7, 5)
    core, x, y = data(sum(rows))
    with torch.no_grad():
        fitted = core(x)
    ranks = on_ranks(tiny_or_fitted_measures, rows)
    for got in ranks:
        for case in ("rms-300", "rms0"):   # refused as at scale 1, on every rank
            assert isinstance(got[case][0], str) and "neither a mean nor a sum" in got[case][0], case
        for reduction in ("sum", "mean"):
            top = float(torch.linalg.eigvalsh(dense_hessian(
                core, lambda out, t: nn.functional.mse_loss(out, t, reduction=reduction), (x, fitted)))[-1])
            assert got[f"{reduction}0"][0] == pytest.approx(top, rel=1e-7), reduction
        assert all(kept for _, kept in got.values())   # the nudged parameters are put back bit for bit


def fitted_here_only_measures(rank, world, rows):
    """A root-mean-square loss, rank 0's targets fitted exactly (its halves say 'both'), rank 1's not
    (neither): every rank asks again at nudged parameters, and the error each raises."""
    from torch.distributed.fsdp import fully_shard

    core, x, y = data(sum(rows))
    with torch.no_grad():
        fitted = core(x)
    targets = torch.cat([fitted[:rows[0]], y[rows[0]:]])
    lo, hi = sum(rows[:rank]), sum(rows[:rank + 1])
    model = ScaledLossInside(data(sum(rows))[0], "rms", 1.0)
    fully_shard(model.core.l1)
    fully_shard(model)
    try:
        catapult.sharpness(model, output_loss, ({"x": x[lo:hi], "labels": targets[lo:hi]}, None),
                           tol=1e-10, distributed=True)
    except ValueError as err:
        return str(err)
    return None


@pytest.mark.slow  # two spawned interpreters importing torch
def test_a_rank_that_is_neither_tells_its_own_losses_when_another_rank_asks_again():
    """Rank 1's shard is neither a mean nor a sum at the parameters themselves: its refusal shows its
    losses there (the shard's root-mean-square re-derived on the unsharded model), not those at the
    parameters nudged because rank 0's exactly fitted shard said 'both'."""
    rows = (7, 5)
    core, x, y = data(sum(rows))
    with torch.no_grad():
        rms = float(((core(x[7:]) - y[7:]) ** 2).mean().sqrt())
    got = on_ranks(fitted_here_only_measures, rows)
    assert all(isinstance(g, str) and "neither a mean nor a sum" in g for g in got), got
    assert f"full batch {rms:.6g}," in got[1], (rms, got[1])
