"""RAdam with decoupled weight decay (``decoupled_weight_decay=True``) whose param groups decay
differently (or move at other lrs): torch's rectified step is ``theta' = (1 - lr_i wd_i) theta -
lr_i r_t S m'``, the decay neither rectified nor pre-conditioned, so the pre-conditioned operator
must hold the groups' decay differences over the threshold's ``r_t`` (as AdamW's hold them over 1).

Truth: a NumPy re-derivation of torch RAdam's next step (each parameter's ``S = lr r_t sqrt(1 -
b2^t) / ((1 - b1^t)(sqrt(v') + eps))``) and its linear map on the dense float64 Hessian: the map
has the root ``-1`` where ``(1 - b1) S H theta = (1 + b1)(2 - D) theta`` (``D = diag(lr_i wd_i)``),
a generalized eigenproblem; the factor ``alpha`` on every group's lr putting it at the edge is
found in NumPy, and catapult's ratio for the step at those lrs must be 1 there."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_gradient, dense_hessian
from test_tracker_radam_counts import radam_next_step_scales

MSE = nn.MSELoss()
B1 = 0.9


def _setup(beta2: float, decays, lrs, steps: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(10, 3, generator=gen, dtype=torch.float64),
             torch.randn(10, 2, generator=gen, dtype=torch.float64))
    opt = torch.optim.RAdam([{"params": model[0].parameters(), "weight_decay": decays[0], "lr": lrs[0]},
                             {"params": model[2].parameters(), "weight_decay": decays[1], "lr": lrs[1]}],
                            betas=(B1, beta2), decoupled_weight_decay=True)
    for _ in range(steps):
        opt.zero_grad()
        MSE(model(batch[0]), batch[1]).backward()
        opt.step()
    return model, batch, opt


def _edge_measure(model, batch, opt, alpha: float) -> float:
    """The largest generalized eigenvalue of ``(1 - b1) S H`` against ``(1 + b1)(2 - D)`` for the
    next step with every group's lr times ``alpha`` (1: the step's linear map has the root -1)."""
    H = dense_hessian(model, MSE, batch).numpy()
    g = dense_gradient(model, MSE, batch).numpy()
    scales, decay = radam_next_step_scales(opt, g, alpha)
    s = np.sqrt(scales)
    left = (1 - B1) * s[:, None] * H * s[None, :]        # symmetric: S^1/2 H S^1/2
    right = np.diag((1 + B1) * (2 - decay))
    return float(scipy.linalg.eigh(left, right, eigvals_only=True)[-1])


@pytest.mark.parametrize("beta2, decays, lrs, steps", [
    (0.9, (0.0, 3.0), (0.01, 0.01), 30),        # r_t = 1: the decays' difference only
    (0.999, (0.5, 4.0), (0.01, 0.01), 12),      # r_t ~ 0.1: the difference over r_t
    (0.999, (2.0, 2.0), (0.01, 0.03), 12),      # one decay, the second group at 3x the lr
])
def test_the_ratio_is_one_where_the_steps_linear_map_reaches_minus_one(beta2, decays, lrs, steps):
    model, batch, opt = _setup(beta2, decays, lrs, steps)
    top = 2.0 / max(g["lr"] * g["weight_decay"] for g in opt.param_groups)   # (1 - lr wd) = -1 there
    alpha = scipy.optimize.brentq(lambda a: _edge_measure(model, batch, opt, a) - 1.0, 1e-6, top * (1 - 1e-9), rtol=1e-13)
    for group in opt.param_groups:
        group["lr"] *= alpha
    record = catapult.SharpnessTracker(model, MSE, opt, tol=1e-11, max_iter=300).step(batch)
    assert record.kind == "preconditioned"
    assert record.ratio == pytest.approx(1.0, rel=1e-7)
    est = catapult.preconditioned_sharpness(model, MSE, batch, opt, scale_by_group_lr=True, tol=1e-11, max_iter=300)
    assert est.value / catapult.instability_threshold(opt) == pytest.approx(1.0, rel=1e-7)
