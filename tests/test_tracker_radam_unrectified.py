"""RAdam's un-rectified steps (EMA-momentum SGD, no pre-conditioner) where the groups' lrs or
decays differ, a group is frozen (lr 0) or a parameter is held by no group: the record of
catapult.SharpnessTracker against a NumPy re-derivation of torch RAdam's un-rectified step on the
dense float64 Hessian. The truth is the step's linearisation, ``m' = b1 m + (1 - b1)(g + wd_i theta)``
(coupled) or ``theta`` first times ``1 - lr_i wd_i`` (decoupled), ``theta' = theta - lr_i m'``, with
the momentum's bias correction at 1 as the threshold takes it: its stability edge is the common
factor ``c*`` of every group's lr at which its spectral radius reaches 1, where the record's ratio
must be 1. The whole Hessian's sharpness (what the tracker measured) took the frozen part's
curvature and every group at the first group's lr, and left the decays' difference out.

The model is linear in its parameters (MSE), so the loss is an exact quadratic with a positive
definite Hessian: every mode is damped below the edge, and one torch step is checked against the
re-derived map (with torch's ``1 / (1 - b1^t)``) first."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.optimize import brentq

import catapult
from dense_curvature import dense_gradient, dense_hessian

LOSS = nn.MSELoss()
B1 = 0.9


class TwoInputs(nn.Module):
    """``a(x[:, :3]) + b(x[:, 3:])``: linear in (a.weight, a.bias, b.weight)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 2, bias=False)

    def forward(self, x):
        return self.a(x[:, :3]) + self.b(x[:, 3:])


# per case: each parameter's (lr, weight_decay) or None (held by no group), and decoupled decay
CASES = {
    "lrs": ([(1.0, 0.0), (3.0, 0.0), (0.2, 0.0)], False),
    "frozen_group": ([(1.0, 0.0), (1.0, 0.0), (0.0, 0.0)], False),
    "unheld": ([(1.0, 0.0), (1.0, 0.0), None], False),
    "frozen_first": ([(0.0, 0.0), (1.0, 0.0), (1.0, 0.0)], False),
    "coupled_decay": ([(1.0, 0.0), (1.0, 0.3), (1.0, 0.05)], False),
    "decoupled_decay": ([(1.0, 0.02), (0.5, 0.2), (2.0, 0.0)], True),
    "alike": ([(1.0, 0.1), (1.0, 0.1), (1.0, 0.1)], False),     # the case that was already right
}


def _setup(case: str):
    spec, decoupled = CASES[case]
    torch.manual_seed(0)
    model = TwoInputs().double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(12, 5, generator=gen, dtype=torch.float64),
             torch.randn(12, 2, generator=gen, dtype=torch.float64))
    params = [model.a.weight, model.a.bias, model.b.weight]
    groups = [{"params": [p], "lr": s[0], "weight_decay": s[1]} for p, s in zip(params, spec) if s is not None]
    opt = torch.optim.RAdam(groups, betas=(B1, 0.999), decoupled_weight_decay=decoupled)
    return model, batch, opt, params


def _per_entry(opt, params, key):
    where = {id(p): g for g in opt.param_groups for p in g["params"]}
    return np.concatenate([np.full(p.numel(), float(where[id(p)][key]) if id(p) in where else 0.0)
                           for p in params])


def _step_map(H, lr, wd, decoupled, b1=B1, correction=1.0):
    """The linear map of one un-rectified step on ``(theta - theta*, m)`` (``g = H (theta - theta*)``);
    ``correction`` is torch's ``1 / (1 - b1^t)`` on the momentum."""
    n = len(lr)
    L = np.diag(lr * correction)
    g_of_theta = H if decoupled else H + np.diag(wd)
    keep = np.eye(n) - (np.diag(lr * wd) if decoupled else 0.0)
    m_row = np.hstack([(1 - b1) * g_of_theta, b1 * np.eye(n)])
    theta_row = np.hstack([keep, np.zeros((n, n))]) - L @ m_row
    return np.vstack([theta_row, m_row])


def _edge_factor(H, lr, wd, decoupled) -> float:
    """``c*``: the stability edge of the step with every lr times c, on the coordinates it moves
    (an unmoved one is constant and only forces the others)."""
    moved = lr > 0
    Hm = H[np.ix_(moved, moved)]

    def radius(c):
        return np.abs(np.linalg.eigvals(_step_map(Hm, c * lr[moved], wd[moved], decoupled))).max() - 1.0

    hi = 1.0
    while radius(hi) < 0:
        hi *= 2
    lo = hi / 2
    while radius(lo) >= 0:
        lo /= 2
    return brentq(radius, lo, hi, xtol=1e-14, rtol=1e-14)


def test_the_map_is_torchs_step():
    """One torch RAdam step (un-rectified, t = 1) is the re-derived map with ``1 / (1 - b1)``, on
    the case where every feature differs (lrs, decays, decoupled)."""
    model, batch, opt, params = _setup("decoupled_decay")
    H = dense_hessian(model, LOSS, batch).numpy()
    g = dense_gradient(model, LOSS, batch).numpy()
    theta = np.concatenate([p.detach().numpy().reshape(-1) for p in params])
    opt.zero_grad()
    LOSS(model(batch[0]), batch[1]).backward()
    opt.step()
    after = np.concatenate([p.detach().numpy().reshape(-1) for p in params])
    lr, wd = _per_entry(opt, params, "lr"), _per_entry(opt, params, "weight_decay")
    # the gradient is affine, g(theta) = H theta + k: the map on (theta, m = 0), plus k's part
    k = g - H @ theta
    correction = 1.0 / (1.0 - B1)
    step = _step_map(H, lr, wd, True, correction=correction) @ np.concatenate([theta, np.zeros_like(theta)])
    expected = step[:len(theta)] - lr * correction * (1 - B1) * k
    np.testing.assert_allclose(after, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_unrectified_record_sits_at_the_steps_edge(case):
    model, batch, opt, params = _setup(case)
    for _ in range(2):                       # steps 1, 2 taken: step 3 is un-rectified too
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        opt.step()
    H = dense_hessian(model, LOSS, batch).numpy()
    lr, wd = _per_entry(opt, params, "lr"), _per_entry(opt, params, "weight_decay")
    c = _edge_factor(H, lr, wd, CASES[case][1])
    for group in opt.param_groups:
        group["lr"] *= c
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-12, max_iter=300).step(batch)
    assert record.ratio == pytest.approx(1.0, rel=1e-7)
    assert record.kind == ("hessian" if case == "alike" else "lr_scaled")
