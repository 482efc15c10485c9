"""A body frozen by ``requires_grad=False`` in the first param group, at another ``b1`` (Adam) or
momentum (SGD) than the head's: the step moves the head alone, so its threshold is the head
group's and the sharpness that of the head's parameters. The tracker refused the step ("param
group 1 has betas[0]=0.9 and param group 0 betas[0]=0.5"). Which groups count is one rule,
:func:`catapult.optim.thresholds.group_moves`. Truth: a dense Hessian of the head's parameters with
Adam's first-step pre-conditioner written out in NumPy, the closed-form thresholds, and a tracker
of a head-only optimizer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import catapult
from catapult.optim.thresholds import group_decays

LR = 1e-2


def _setup():
    torch.manual_seed(0)
    body, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    model = torch.nn.Sequential(body, torch.nn.Tanh(), head).double()
    for p in body.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    return model, body, head, (x, y)


def _loss(out, target):
    return ((out - target) ** 2).mean()


def _dense(model, head, batch):
    """The head's Hessian and gradient, dense (torch.func over the flat head parameters)."""
    x, y = batch
    shapes = [p.shape for p in head.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in head.parameters()])
    features = torch.tanh(model[0](x)).detach()

    def loss_of(flat):
        w = flat[:shapes[0].numel()].reshape(shapes[0])
        b = flat[shapes[0].numel():]
        return _loss(features @ w.T + b, y)

    H = torch.autograd.functional.hessian(loss_of, flat0).numpy()
    g = torch.func.grad(loss_of)(flat0).numpy()
    return H, g


def test_adam_with_a_frozen_body_at_another_b1_is_measured_as_the_head_s():
    model, body, head, batch = _setup()
    b1, b2, eps = 0.9, 0.999, 1e-8
    opt = torch.optim.Adam([{"params": body.parameters(), "betas": (0.5, b2)}, {"params": head.parameters()}],
                           lr=LR, betas=(b1, b2), eps=eps)
    record = catapult.SharpnessTracker(model, _loss, opt, tol=1e-10).step(batch)
    H, g = _dense(model, head, batch)
    # the first step's P = (1 - b1) (sqrt(v' / (1 - b2)) + eps), v' = (1 - b2) g^2
    P = (1 - b1) * (np.sqrt((1 - b2) * g ** 2 / (1 - b2)) + eps)
    truth = np.linalg.eigvalsh(H / np.sqrt(np.outer(P, P)))[-1]
    assert record.kind == "preconditioned"
    assert record.value == pytest.approx(truth, rel=1e-6)
    assert record.threshold == pytest.approx((2 + 2 * b1) / ((1 - b1) * LR), rel=1e-12)   # the head's b1
    alone = catapult.SharpnessTracker(model, _loss, torch.optim.Adam(head.parameters(), lr=LR, betas=(b1, b2),
                                                                     eps=eps), tol=1e-10).step(batch)
    assert (alone.value, alone.threshold, alone.kind) == pytest.approx((record.value, record.threshold, record.kind))


def test_sgd_with_a_frozen_body_at_another_momentum_is_measured_as_the_head_s():
    model, body, head, batch = _setup()
    opt = torch.optim.SGD([{"params": body.parameters(), "momentum": 0.0}, {"params": head.parameters()}],
                          lr=LR, momentum=0.9)
    record = catapult.SharpnessTracker(model, _loss, opt, tol=1e-10).step(batch)
    H, _ = _dense(model, head, batch)
    assert record.kind == "hessian"
    assert record.value == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-6)
    assert record.threshold == pytest.approx((2 + 2 * 0.9) / LR, rel=1e-12)


def test_a_moving_group_at_another_b1_is_still_refused():
    model, body, head, batch = _setup()
    for p in body.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": body.parameters(), "betas": (0.5, 0.999)}, {"params": head.parameters()}],
                           lr=LR)
    with pytest.raises(ValueError, match="betas"):
        catapult.SharpnessTracker(model, _loss, opt).step(batch)


def test_group_moves_is_the_rule_of_the_decays_too():
    from catapult.optim.thresholds import group_moves

    a, b = torch.zeros(1), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a], "weight_decay": 0.5}, {"params": [b]}], lr=0.1)
    assert [group_moves(g) for g in opt.param_groups] == [False, True]
    assert group_decays(opt) == {(0.0, False)}
