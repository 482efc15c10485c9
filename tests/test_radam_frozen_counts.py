"""RAdam whose optimizer still holds a part frozen by ``requires_grad=False`` (fine-tuning a new head
on a trained body: ``RAdam(model.parameters())`` then ``body.requires_grad_(False)``): the frozen part's
step counts stay where its training left them (10 here) while the head's next step is torch's step 1,
un-rectified (EMA-momentum SGD). The step's threshold is that of step 1, ``(2 + 2 b1) / ((1 - b1) lr)``
(38 / lr at b1 = 0.9), and its sharpness the head's Hessian's. Before, the reference step was the
largest count over every parameter: ``instability_threshold`` gave the rectified step 11's (S: 1 / r_11
= 18.7x the step's, at b2 = 0.999) and :class:`catapult.SharpnessTracker` refused the step as 'part
momentum SGD, part Adam's' though the frozen part does not move."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult import SharpnessTracker, instability_threshold
from catapult.optim.thresholds import radam_reference_step, radam_step_kind

LR, B1 = 1e-3, 0.9


def _fine_tune():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt = torch.optim.RAdam(model.parameters(), lr=LR, betas=(B1, 0.999))
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    model[0].requires_grad_(False)                 # the body frozen, a new head
    model[2].reset_parameters()
    for p in model[2].parameters():
        opt.state.pop(p, None)
    opt.zero_grad(set_to_none=True)
    return model, (x, y), opt


def test_the_threshold_is_the_moving_parts_next_step():
    model, _, opt = _fine_tune()
    assert radam_reference_step(opt) == (1, 0.999)
    assert instability_threshold(opt) == pytest.approx((2 + 2 * B1) / ((1 - B1) * LR), rel=1e-12)


def test_the_tracker_measures_the_heads_unrectified_step():
    model, batch, opt = _fine_tune()
    head = list(model[2].parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in head])

    def loss_of(v):
        w, b = v[:4].view(1, 4), v[4:]
        return torch.nn.functional.mse_loss(model[1](model[0](batch[0])) @ w.T + b, batch[1])

    top = float(np.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat).numpy())[-1])
    record = SharpnessTracker(model, torch.nn.functional.mse_loss, opt, tol=1e-12, max_iter=200).step(batch)
    assert record.kind == "hessian"
    assert record.value == pytest.approx(top, rel=1e-9)
    assert record.threshold == pytest.approx((2 + 2 * B1) / ((1 - B1) * LR), rel=1e-12)


def test_with_every_part_frozen_the_reference_is_the_largest_count():
    # (mutation pass 19, TA12) where no parameter requires grad, the counts of all of them: the body's
    # 10 steps give step 11 (TA12 read none of them: step 1)
    model, _, opt = _fine_tune()
    model.requires_grad_(False)
    assert radam_reference_step(opt) == (11, 0.999)


def test_a_body_frozen_by_lr_0_counts_on_and_is_not_the_reference_step():
    """A body frozen by lr 0 (its own group, still requiring grad) counts its steps on from its training
    (10, then 11 beside the new head's 1), while the head's next step, torch's step 2, is un-rectified.
    The reference step was the largest count over every parameter that requires grad: 12, rectified,
    so instability_threshold gave 1 / r_12 = 17.3x the step's threshold (S) and the kind 'preconditioned'.
    Truth: torch's own count of the head and rho_2 = 1999 - 4 (0.999^2) / (1 - 0.999^2) < 5."""
    model, batch, opt = _fine_tune()
    model[0].requires_grad_(True)
    body, head = list(model[0].parameters()), list(model[2].parameters())
    opt.param_groups[0]["params"] = body
    opt.param_groups[0]["lr"] = 0.0                # the body frozen by lr 0
    opt.add_param_group({"params": head, "lr": LR})
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(batch[0]), batch[1]).backward()
    opt.step()
    assert [int(opt.state[p]["step"]) for p in (body[0], head[0])] == [11, 1]
    t = int(opt.state[head[0]]["step"]) + 1
    rho = 2 / (1 - 0.999) - 1 - 2 * t * 0.999**t / (1 - 0.999**t)
    assert t == 2 and rho < 5                       # un-rectified: EMA-momentum SGD
    assert radam_reference_step(opt) == (2, 0.999)
    assert radam_step_kind(opt, radam_reference_step(opt)[0]) == "hessian"
    assert instability_threshold(opt) == pytest.approx((2 + 2 * B1) / ((1 - B1) * LR), rel=1e-12)
    # a warmup from 0 (every group at lr 0) with the body frozen by lr_mult 0: the head's count still
    for group, mult in zip(opt.param_groups, (0.0, 1.0)):
        group["lr"], group["lr_mult"] = 0.0, mult
    assert radam_reference_step(opt) == (2, 0.999) and radam_step_kind(opt, 2) == "hessian"
