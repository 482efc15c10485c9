"""``SharpnessTracker(kind="hessian")`` where the step has no pre-conditioner (SGD, RAdam before
rectification) and its groups decay differently: the threshold is lowered by the first group's
decay only, so ``lambda_max(H)`` over it is not the step's edge. Truth: the dense Hessian of a
linear least-squares model; SGD on ``L + wd_i/2 ||theta_i||^2`` is stable iff
``lambda_max(H + W) < 2 / lr``: with groups at one lr, ``W = diag(wd_i)`` makes the edge
``lambda_max(H + W)``, which the tracker's ``hessian`` record (ratio ``lambda_max(H) / (2 / lr - wd_0)``)
misses; it is refused, ``auto`` gives the edge."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_hessian

LOSS = nn.MSELoss()


def _setup(optimizer):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(12, 3, generator=gen, dtype=torch.float64),
             torch.randn(12, 2, generator=gen, dtype=torch.float64))
    groups = [{"params": [model.weight], "weight_decay": 0.0}, {"params": [model.bias], "weight_decay": 3.0}]
    return model, batch, optimizer(groups)


OPTIMIZERS = {"sgd": lambda groups: torch.optim.SGD(groups, lr=0.1),
              "radam_unrectified": lambda groups: torch.optim.RAdam(groups, lr=0.1, betas=(0.9, 0.5))}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_hessian_kind_with_groups_decaying_differently_is_refused_and_auto_holds_the_decay(name):
    model, batch, opt = _setup(OPTIMIZERS[name])
    with pytest.raises(ValueError, match="kind='hessian' with param groups that decay differently"):
        catapult.SharpnessTracker(model, LOSS, opt, kind="hessian").step(batch)
    H = dense_hessian(model, LOSS, batch).numpy()
    W = np.diag([0.0] * model.weight.numel() + [3.0] * model.bias.numel())
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-12, max_iter=200).step(batch)
    # the threshold holds the first group's decay (0): the record is lambda_max(H + W)
    assert record.value == pytest.approx(np.linalg.eigvalsh(H + W)[-1], rel=1e-9)
    assert record.value > np.linalg.eigvalsh(H)[-1] * 1.05


def test_hessian_kind_with_one_decay_is_measured():
    model, batch, _ = _setup(OPTIMIZERS["sgd"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    record = catapult.SharpnessTracker(model, LOSS, opt, kind="hessian", tol=1e-12, max_iter=200).step(batch)
    assert record.value == pytest.approx(np.linalg.eigvalsh(dense_hessian(model, LOSS, batch).numpy())[-1], rel=1e-9)
    assert record.threshold == pytest.approx(2 / 0.1 - 0.5)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("frozen_first", [True, False])
def test_a_group_frozen_by_requires_grad_decays_nothing(name, frozen_first):
    """A group whose parameters do not require grad (a frozen body, its own weight decay) is not
    moved by the step: its decay is no part of it. ``kind="hessian"`` was refused ('groups that
    decay differently') and ``auto`` recorded ``lr_scaled``; the step is plain GD on the rest, whose
    edge is the trainable block's ``lambda_max(H)`` against ``2 / lr - wd`` of the moving group."""
    model, batch, _ = _setup(OPTIMIZERS[name])
    model.bias.requires_grad_(False)
    groups = [{"params": [model.bias], "weight_decay": 3.0}, {"params": [model.weight], "weight_decay": 0.5}]
    opt = OPTIMIZERS[name](groups if frozen_first else groups[::-1])
    top = np.linalg.eigvalsh(dense_hessian(model, LOSS, batch).numpy())[-1]      # the weight's block
    for kind in ("hessian", "auto"):
        record = catapult.SharpnessTracker(model, LOSS, opt, kind=kind, tol=1e-12, max_iter=200).step(batch)
        assert record.kind == "hessian"
        assert record.value == pytest.approx(top, rel=1e-9)
        assert record.threshold == pytest.approx(rule_edge(name) - 0.5, rel=1e-12)


def rule_edge(name: str) -> float:
    """The first step's edge at lr 0.1 without decay: GD's 2 / lr; RAdam's un-rectified step
    (EMA momentum 0.9) (2 + 2 b1) / ((1 - b1) lr)."""
    return 2 / 0.1 if name == "sgd" else (2 + 2 * 0.9) / ((1 - 0.9) * 0.1)
