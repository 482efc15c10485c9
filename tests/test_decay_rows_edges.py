"""Mutation pass 17 (CR2, PC6): closed forms at the edges.

* ``coarse_ranks.sub_batch_pays``: a coarsest product's work per rank equal to
  ``COARSE_MIN_RANK_WORK`` pays (the bound is inclusive).
* SGD whose groups differ in lr and weight decay, on a diagonal quadratic: coordinate ``j`` of
  group ``i`` is stable iff ``lr_i (a_j + wd_i) < 2``; at the lr factor where the largest reaches
  2 (here the second group's, at half the first's lr) the tracker's ratio is 1: its lr-scaled
  operator holds ``m_i wd_i - wd_0`` on group ``i``'s rows."""
from __future__ import annotations

import pytest
import torch

import catapult
from catapult.curvature.coarse_ranks import COARSE_MIN_RANK_WORK, sub_batch_pays
from test_weight_decay_threshold import BATCH, Two, quadratic_loss


def test_the_rank_work_bound_is_inclusive():
    params = COARSE_MIN_RANK_WORK // 32           # 512 samples on 1 rank: 512 // 16 = 32 per coarsest product
    assert params * 32 == COARSE_MIN_RANK_WORK
    assert sub_batch_pays(512, 1, params) and not sub_batch_pays(512, 1, params - 1)
    assert sub_batch_pays(1024, 2, params) and not sub_batch_pays(1023, 2, params)


def test_sgd_groups_at_other_lrs_and_decays_are_at_their_edge():
    a = torch.diag(torch.tensor([1.0, 40.0], dtype=torch.float64))
    lrs, decays = (0.1, 0.05), (4.0, 1.0)
    alpha = min(2.0 / (lr * (float(a[j, j]) + wd)) for j, (lr, wd) in enumerate(zip(lrs, decays)))
    model = Two()
    opt = torch.optim.SGD([{"params": [model.u], "lr": alpha * lrs[0], "weight_decay": decays[0]},
                           {"params": [model.v], "lr": alpha * lrs[1], "weight_decay": decays[1]}])
    record = catapult.SharpnessTracker(model, quadratic_loss(a), opt, tol=1e-12).step(BATCH)
    assert record.kind == "lr_scaled"
    assert record.ratio == pytest.approx(1.0, rel=1e-9)
