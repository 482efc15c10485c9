"""RAdam fine-tuning with the frozen body listed first at another ``beta2`` than the head (body
``requires_grad=False``): the step is the head's, so its rectification ``r_t`` and whether step ``t``
is rectified at all are the head's ``beta2``'s. ``radam_reference_step`` and ``radam_step_kind`` read the
first group's (the body's): preconditioned_sharpness's rows carried ``r_head / r_body`` (0.32x at
b2 0.999 / 0.99, step 8) beside ``instability_threshold``, which takes the head's, so the ratio to the
threshold was 0.32x the step's (S); and with the body at b2 = 0.75 (rectified from step 8) the head's
rectified step 6 was called un-rectified. The truth: the dense float64 Hessian of the head,
pre-conditioned by torch RAdam's step from the formula, and ``radam_rho`` of the head's beta2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from catapult import instability_threshold, preconditioned_sharpness
from catapult.engine.records import RADAM_KIND
from catapult.engine.sharpness_rule import step_kind
from catapult.optim.thresholds import radam_rectification, radam_reference_step, radam_rho, radam_step_kind
from dense_curvature import dense_gradient, dense_hessian

LOSS = torch.nn.MSELoss()
HEAD_LR, B1, B2 = 1e-2, 0.9, 0.999


def _fine_tune(body_beta2: float, steps: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    batch = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64))
    model[0].requires_grad_(False)
    opt = torch.optim.RAdam([{"params": model[0].parameters(), "lr": 1e-3, "betas": (B1, body_beta2)},
                             {"params": model[2].parameters(), "lr": HEAD_LR, "betas": (B1, B2)}])
    for _ in range(steps):
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        opt.step()
    return model, batch, opt


def test_the_preconditioned_ratio_is_the_heads_step():
    model, batch, opt = _fine_tune(0.99, 7)            # next step 8: rectified at either beta2
    head = list(model[2].parameters())
    t = 8
    g = dense_gradient(model, LOSS, batch).numpy()
    v = np.concatenate([opt.state[p]["exp_avg_sq"].reshape(-1).numpy() for p in head])
    eps = opt.param_groups[1]["eps"]
    # torch RAdam's rectified step: lr r_t m_hat sqrt(1 - b2^t) / (sqrt(v') + eps)
    P = (1 - B1 ** t) * (np.sqrt(B2 * v + (1 - B2) * g ** 2) + eps) / math.sqrt(1 - B2 ** t)
    H = dense_hessian(model, LOSS, batch).numpy()
    top = float(np.linalg.eigvalsh(H / np.sqrt(P)[:, None] / np.sqrt(P)[None, :])[-1])
    r_t = math.sqrt((radam_rho(t, B2) - 4) * (radam_rho(t, B2) - 2) * (2 / (1 - B2) - 1)
                    / ((2 / (1 - B2) - 5) * (2 / (1 - B2) - 3) * radam_rho(t, B2)))
    truth = top * (1 - B1) * r_t * HEAD_LR / (2 + 2 * B1)     # r_t lambda_max(P^-1 H) over (2 + 2 b1) / ((1 - b1) lr)
    est = preconditioned_sharpness(model, LOSS, batch, opt, scale_by_group_lr=True, tol=1e-11, max_iter=200)
    assert est.value / instability_threshold(opt) == pytest.approx(truth, rel=1e-8)
    assert radam_reference_step(opt) == (t, B2)
    assert radam_rectification(t, B2) == pytest.approx(r_t, rel=1e-12)


def test_rectified_is_the_heads_beta2s_verdict():
    _, _, opt = _fine_tune(0.75, 5)                    # next step 6: rho_6 > 5 at 0.999, not at 0.75
    assert radam_rho(6, B2) > 5 >= radam_rho(6, 0.75)
    assert radam_step_kind(opt, 6) == "preconditioned"
    assert step_kind(RADAM_KIND, opt, 5) == "preconditioned"     # row 5: torch's step 6
