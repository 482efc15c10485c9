"""A first param group frozen at lr 0 beside groups that move: preconditioned_sharpness(
scale_by_group_lr=True), lr_scaled_sharpness and group_lr_multipliers take the first group that
moves as the reference (as catapult.SharpnessTracker does), so each equals the tracker's record
and the dense float64 truth of the step: lambda_max(D^1/2 H D^1/2) with D = (lr_i / lr_ref) / P
(P = 1 for SGD; Adam's first step P = (1 - b1)(|g| + eps)), 0 on the frozen block. They took
every group alike (ratio 1, the frozen one included) before."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.optim.thresholds import group_lr_multipliers, lr_scaled_sharpness
from dense_curvature import dense_gradient, dense_hessian

LOSS = nn.MSELoss()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh(), nn.Linear(2, 2)).double()


def _batch():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(10, 3, generator=gen, dtype=torch.float64),
            torch.randn(10, 2, generator=gen, dtype=torch.float64))


def _groups(model):   # rows 0-15 frozen, 16-25 at 0.1, 26-31 at 0.05
    return [{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters(), "lr": 0.1},
            {"params": model[4].parameters(), "lr": 0.05}]


def _dense_top(model, batch, p_of_g):
    H = dense_hessian(model, LOSS, batch).numpy()
    m = np.concatenate([np.zeros(16), np.ones(10), np.full(6, 0.5)])
    d = np.sqrt(m / p_of_g(dense_gradient(model, LOSS, batch).numpy()))
    return float(np.linalg.eigvalsh(d[:, None] * H * d[None, :])[-1])


def test_sgd_multipliers_and_lr_scaled_sharpness_defer_to_the_first_group_that_moves():
    model, batch = _net(), _batch()
    opt = torch.optim.SGD(_groups(model), lr=0.1)
    params = list(model.parameters())
    assert group_lr_multipliers(opt, params).tolist() == [0.0] * 16 + [1.0] * 10 + [0.5] * 6
    truth = _dense_top(model, batch, lambda g: np.ones_like(g))
    est = lr_scaled_sharpness(model, LOSS, batch, opt, tol=1e-10, max_iter=300)
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-10, max_iter=300).step(batch)
    assert est.value == pytest.approx(truth, rel=1e-8) and record.value == pytest.approx(truth, rel=1e-8)
    assert record.threshold == pytest.approx(catapult.instability_threshold(opt, lr=0.1))


def test_adam_scale_by_group_lr_defers_to_the_first_group_that_moves():
    model, batch = _net(), _batch()
    opt = torch.optim.Adam(_groups(model), lr=0.1)
    truth = _dense_top(model, batch, lambda g: (1 - 0.9) * (np.abs(g) + 1e-8))   # Adam's first step
    est = catapult.preconditioned_sharpness(model, LOSS, batch, opt, scale_by_group_lr=True, tol=1e-10, max_iter=300)
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-10, max_iter=300).step(batch)
    assert est.value == pytest.approx(truth, rel=1e-7) and record.value == pytest.approx(truth, rel=1e-7)
    assert record.ratio == pytest.approx(est.value / catapult.instability_threshold(opt, lr=0.1), rel=1e-7)


def test_every_group_at_lr_0_keeps_the_lr_mult_ratios():
    """A warmup from 0 (every group at 0): the operator of the steps to come, lr_mult_i / lr_mult_0."""
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a], "lr": 0.0, "lr_mult": 2.0}, {"params": [b], "lr": 0.0, "lr_mult": 1.0}])
    assert group_lr_multipliers(opt, [a, b]).tolist() == [1.0, 1.0, 0.5]


def test_an_empty_group_is_not_the_reference():
    """Mutation pass 17 (TH19): the reference is the first group that holds parameters and moves
    them; an empty group at lr 0.5 between the frozen first group and the one at 0.1 is not it
    (the multipliers were 0.2 for 1)."""
    from catapult.optim.thresholds import group_lr_multipliers

    a, b = torch.zeros(1, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a], "lr": 0.0}, {"params": [], "lr": 0.5}, {"params": [b], "lr": 0.1}])
    assert group_lr_multipliers(opt, [a, b]).tolist() == [0.0, 1.0, 1.0]
