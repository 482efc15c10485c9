"""sharpness(distributed=True) starts from the coarse levels one process takes (catapult.curvature.
coarse_ranks): each rank cuts its shard alike, the products are all-reduced. 2 gloo ranks on
loopback against one process on the union (float64, to 1e-6), and the product counts the rule
gives: where the shards are contiguous runs whose length the divisors divide, the ranks' sub-batches
make up the union's own, so the levels and the exact solve take one process's counts; the
finite-difference level of a small batch is the union's whatever the shards. Before, every
distributed solve started cold (no coarse products, more exact ones)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import catapult
from gloo_ranks import on_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")


def problem(n, reduction="mean"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return model, nn.MSELoss(reduction=reduction), (x, y)


#: coarse="auto"'s sub-batch levels at tol 1e-8, given explicitly: under distributed=True "auto"
#: gives this small model the finite-difference level (coarse_ranks.sub_batch_pays)
SUB_BATCH = [(16, 3e-3), (4, 3e-3)]


def solves(model, loss_fn, batch, distributed, coarse="auto"):
    kw = {"distributed": True} if distributed else {}
    out = {}
    for name, extra in (("fast", {"coarse": coarse}), ("lean", {"memory": "lean", "max_iter": 1000, "coarse": coarse}),
                        ("cold", {"coarse": None})):
        est = catapult.sharpness(model, loss_fn, batch, tol=1e-8, **extra, **kw)
        out[name] = (est.value, est.matvecs, est.coarse_matvecs, est.coarse_cost)
    return out


def contiguous(rank, world, shards, reduction, wrap, interleaved=False, coarse="auto"):
    model, loss_fn, (x, y) = problem(sum(shards), reduction)
    if interleaved:
        shard = (x[rank::world], y[rank::world])
    else:
        lo = sum(shards[:rank])
        shard = (x[lo:lo + shards[rank]], y[lo:lo + shards[rank]])
    if wrap:
        model = nn.parallel.DistributedDataParallel(model)
    out = solves(model, loss_fn, shard, True, coarse)
    del model   # a DDP wrapper goes while the group is alive
    return out


@pytest.mark.slow  # two spawned interpreters importing torch
@pytest.mark.parametrize("shards, reduction, wrap", [((256, 256), "mean", False), ((256, 256), "sum", True),
                                                     ((10, 6), "mean", False), ((10, 6), "sum", False)])
def test_two_ranks_take_one_process_coarse_start_and_its_product_counts(shards, reduction, wrap):
    model, loss_fn, batch = problem(sum(shards), reduction)
    coarse = SUB_BATCH if sum(shards) >= 256 else "auto"
    single = solves(model, loss_fn, batch, False, coarse)
    assert single["fast"][2] > 0 and single["lean"][2] > 0 and single["cold"][2] == 0
    for got in on_ranks(contiguous, shards, reduction, wrap, False, coarse):
        for name in ("fast", "lean", "cold"):
            value, matvecs, coarse_matvecs, coarse_cost = got[name]
            assert value == pytest.approx(single[name][0], rel=1e-6), name
            # the union's levels: one process's products, exact and coarse (was 0 coarse, the cold count)
            if name == "lean" and shards == (10, 6):
                # lean sizes its basis per shard and takes the ranks' smallest (3 here, 10 for the
                # union): the finite-difference level's Lanczos keeps that many vectors, so its
                # vector (not its product count) is another one's, and so is the exact solve's count
                assert coarse_matvecs == single[name][2], name
            else:
                assert (matvecs, coarse_matvecs) == single[name][1:3], name
            assert coarse_cost == pytest.approx(single[name][3], rel=1e-12), name
        assert got["fast"][1] < got["cold"][1]


def test_interleaved_shards_take_sub_batch_levels_of_the_union():
    # shards x[rank::2] of 300 samples: each rank's 150 // 16 and 150 // 4 samples, every 16th and
    # 4th of its own (not the union's every 16th); the levels are the Hessians of the union of
    # those, and the answer is the union's all the same
    model, loss_fn, batch = problem(300)
    want = catapult.sharpness(model, loss_fn, batch, tol=1e-8)
    ranks = on_ranks(contiguous, (150, 150), "mean", False, True, SUB_BATCH)
    for got in ranks:
        value, matvecs, coarse_matvecs, coarse_cost = got["fast"]
        assert value == pytest.approx(want.value, rel=1e-6)
        assert coarse_matvecs > 0 and matvecs < got["cold"][1]
        # the levels' share of the union's samples: (9 + 9) / 300 and (37 + 37) / 300 per product
        assert 0 < coarse_cost <= coarse_matvecs * 74 / 300
    assert ranks[0] == ranks[1]


def differing_levels(rank, world):
    model, loss_fn, (x, y) = problem(64)
    shard = (x[rank::world], y[rank::world])
    try:
        catapult.sharpness(model, loss_fn, shard, coarse=[[(2, 1e-2)], [(4, 1e-3)]][rank], distributed=True)
    except ValueError as err:
        return str(err)
    return None


def test_coarse_levels_that_differ_between_the_ranks_are_refused_on_every_rank():
    for message in on_ranks(differing_levels):
        assert message is not None and "coarse" in message


def auto_levels(rank, world, min_work):
    from catapult.curvature import coarse_ranks

    model, loss_fn, (x, y) = problem(512)
    shard = (x[256 * rank:256 * (rank + 1)], y[256 * rank:256 * (rank + 1)])
    kept = coarse_ranks.COARSE_MIN_RANK_WORK
    coarse_ranks.COARSE_MIN_RANK_WORK = min_work   # (the rank processes are reused: put back below)
    try:
        est = catapult.sharpness(model, loss_fn, shard, tol=1e-8, distributed=True)
        levels = coarse_ranks.union_levels(shard, "auto", 1e-8, params=50)
    finally:
        coarse_ranks.COARSE_MIN_RANK_WORK = kept
    return est.value, est.matvecs, est.coarse_matvecs, est.coarse_cost, levels


@pytest.mark.slow  # two spawned interpreters importing torch
def test_auto_takes_sub_batch_levels_only_where_a_coarse_product_pays_for_its_all_reduce():
    # 512 samples on 2 ranks, a 50-parameter model: a coarsest product works on 50 x (256 // 16) =
    # 800 parameter-samples per rank, far below COARSE_MIN_RANK_WORK, so "auto" takes the
    # finite-difference level (one process's on the union: its value and counts); with the
    # threshold at 800 it takes one process's sub-batch levels. Before, the sub-batch levels always
    # (the 2-rank counts: 12 exact + 14 coarse, for the difference level's 10 + 7). Since stop 61 the
    # sub-batch levels follow the difference level, and run only where it is skipped (not on this
    # smooth model: the counts are the difference level's either way, the levels say which were chosen)
    from catapult.curvature.coarse import FINITE_DIFFERENCE
    from catapult.curvature.coarse_ranks import COARSE_MIN_RANK_WORK

    model, loss_fn, batch = problem(512)
    assert sum(p.numel() for p in model.parameters()) == 50
    difference = catapult.sharpness(model, loss_fn, batch, tol=1e-8, coarse=[("finite_difference", 3e-3)])
    auto = catapult.sharpness(model, loss_fn, batch, tol=1e-8)   # one process: the difference level, which ran
    assert (auto.matvecs, auto.coarse_matvecs) == (difference.matvecs, difference.coarse_matvecs)
    for min_work, want in ((COARSE_MIN_RANK_WORK, [(FINITE_DIFFERENCE, 3e-3)]),
                           (800, [(FINITE_DIFFERENCE, 3e-3), (16, 3e-3), (64, 3e-3)])):
        for value, matvecs, coarse_matvecs, coarse_cost, levels in on_ranks(auto_levels, min_work):
            assert [tuple(level) for level in levels] == want, min_work
            assert value == pytest.approx(difference.value, rel=1e-6), min_work
            assert (matvecs, coarse_matvecs) == (difference.matvecs, difference.coarse_matvecs), min_work
            assert coarse_cost == pytest.approx(difference.coarse_cost, rel=1e-12), min_work


class _Relu(nn.Module):
    """A float32 3-32-2 MLP calling ``F.relu`` (no module the scan sees), or ``torch.tanh`` where
    ``relu`` is False (a rank whose graph holds no kink)."""

    def __init__(self, relu=True):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.relu = nn.Linear(3, 32), nn.Linear(32, 2), relu

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.nn.functional.relu(h) if self.relu else torch.tanh(h))


def kinked_levels(rank, world, both):
    from catapult.curvature import coarse_ranks

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(512, 3, generator=gen), torch.randn(512, 2, generator=gen)
    shard = (x[256 * rank:256 * (rank + 1)], y[256 * rank:256 * (rank + 1)])
    kept = coarse_ranks.COARSE_MIN_RANK_WORK
    coarse_ranks.COARSE_MIN_RANK_WORK = 0   # a 194-parameter model: sub-batch levels all the same
    try:
        out = {}
        for name, coarse in (("auto", "auto"), ("sub", SUB_BATCH), ("first", [("finite_difference", 3e-3)] + SUB_BATCH)):
            est = catapult.sharpness(_Relu(both or rank == 0), nn.MSELoss(), shard, coarse=coarse, distributed=True)
            out[name] = (est.value, est.matvecs, est.coarse_matvecs, est.error_bound)
    finally:
        coarse_ranks.COARSE_MIN_RANK_WORK = kept
    return out


@pytest.mark.slow  # two spawned interpreters importing torch
@pytest.mark.parametrize("both", [True, False])
def test_the_kink_guess_applies_across_ranks(both):
    # stop 62: distributed=True takes coarse.kink_guess too: a float32 model calling F.relu starts at
    # the sub-batch levels (the explicit levels' counts, on the same ranks), where before it took the
    # difference level first (on the bench's ReLU MLP its kink check skipped it after 2 gradients:
    # 0.97 of a cold start on 2 gloo ranks, bench/RESULTS.md; on this small one it runs). Where only
    # rank 0's graph holds the kink (rank 1's model calls tanh), the ranks take the largest guess: the
    # same levels on both (differing levels ran different collectives). Truth for the value: the
    # dense float64 Hessian of the union's loss.
    import numpy as np
    from dense_curvature import dense_hessian

    class Union(nn.Module):   # the union's loss as one function of the parameters
        def __init__(self):
            super().__init__()
            self.inner = _Relu().double()

        def forward(self, x):
            a, b = self.inner.a, self.inner.b
            second = torch.nn.functional.relu(a(x[256:])) if both else torch.tanh(a(x[256:]))
            return torch.cat([self.inner(x[:256]), b(second)])

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(512, 3, generator=gen), torch.randn(512, 2, generator=gen)
    model = Union()
    top = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), (x.double(), y.double())).numpy())[-1]
    ranks = on_ranks(kinked_levels, both)
    for got in ranks:
        assert got["auto"][1:3] == got["sub"][1:3] and got["auto"][0] == got["sub"][0]
        assert got["first"][1:3] != got["sub"][1:3]   # what "auto" took before
        value, _, _, bound = got["auto"]
        assert abs(value - top) <= max(bound, 1e-5) * abs(top)
    assert ranks[0]["auto"] == ranks[1]["auto"]
