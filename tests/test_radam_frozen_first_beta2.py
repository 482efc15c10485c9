"""RAdam with a part frozen by ``requires_grad=False`` (or held at lr 0) listed first, at another
``beta2`` than the head that moves: the frozen group's ``beta2`` plays no part in the step, so
``preconditioned_sharpness`` and ``instability_threshold`` are the head's. Before,
``radam_reference_step`` took the first group's ``beta2`` (0.9) for the reference rectification
``r_ref`` while the threshold took the head's (0.999): each head parameter's scale ``r_p / r_ref``
was r_11(0.999) / r_11(0.9) = 0.100, and the sharpness read 1.10 for the head's 10.99 (S: a
comparison with the threshold off by 10x); ``radam_step_kind`` read the first group's beta2 too. Truth: torch RAdam's next step on the dense float64
Hessian of the trainable parameters (tests/test_tracker_radam_counts.py's re-derivation)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.optim.thresholds import radam_reference_step, radam_step_kind
from dense_curvature import dense_gradient, dense_hessian
from test_tracker_radam_counts import radam_next_step_scales

LOSS = nn.MSELoss()
B1, B2_HEAD, LR_HEAD = 0.9, 0.999, 0.05


def _fine_tune(frozen: str, b2_body: float):
    torch.manual_seed(1)
    body, head = nn.Linear(3, 3).double(), nn.Linear(3, 2).double()
    model = nn.Sequential(body, nn.Tanh(), head)
    gen = torch.Generator().manual_seed(2)
    batch = (torch.randn(16, 3, generator=gen, dtype=torch.float64),
             torch.randn(16, 2, generator=gen, dtype=torch.float64))
    if frozen == "requires_grad":
        body.requires_grad_(False)
    opt = torch.optim.RAdam([{"params": body.parameters(), "betas": (B1, b2_body),
                              "lr": 0.0 if frozen == "lr 0" else 0.1},
                             {"params": head.parameters(), "betas": (B1, B2_HEAD), "lr": LR_HEAD}])
    for _ in range(10):
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        opt.step()
    if frozen == "lr 0":          # its parameters stay out of the dense truth (the step does not move them)
        body.requires_grad_(False)
    return model, batch, opt


def _true_top(model, batch, opt) -> float:
    """lambda_max(S H) / LR_HEAD of the head's rectified step (the preconditioned operator, in the
    threshold's units: instability_threshold = (2 + 2 b1) / ((1 - b1) lr r_11), the head's)."""
    H = dense_hessian(model, LOSS, batch).numpy()
    g = dense_gradient(model, LOSS, batch).numpy()
    head = torch.optim.RAdam([{"params": list(model[2].parameters()), "betas": (B1, B2_HEAD), "lr": LR_HEAD}])
    head.state.update({p: opt.state[p] for p in model[2].parameters()})
    s = np.sqrt(radam_next_step_scales(head, g)[0])
    return float(np.linalg.eigvalsh(s[:, None] * H * s[None, :])[-1])


@pytest.mark.parametrize("b2_body", [0.9, 0.5])
@pytest.mark.parametrize("frozen", ["requires_grad", "lr 0"])
def test_a_frozen_first_groups_beta2_plays_no_part(frozen, b2_body):
    """beta2 0.5 is never rectified (rho_inf = 3): the head's rectified step 11 was called un-rectified."""
    model, batch, opt = _fine_tune(frozen, b2_body)
    assert radam_reference_step(opt) == (11, B2_HEAD)
    assert radam_step_kind(opt, 11) == "preconditioned"
    threshold = catapult.instability_threshold(opt)
    rho_inf = 2 / (1 - B2_HEAD) - 1
    rho = rho_inf - 2 * 11 * B2_HEAD ** 11 / (1 - B2_HEAD ** 11)
    r_11 = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    assert threshold == pytest.approx((2 + 2 * B1) / ((1 - B1) * LR_HEAD * r_11), rel=1e-12)
    truth = _true_top(model, batch, opt) / (LR_HEAD * r_11)    # lambda_max(P^-1/2 H P^-1/2): S over lr r_t
    est = catapult.preconditioned_sharpness(model, LOSS, batch, opt, tol=1e-12, max_iter=300)
    assert est.value == pytest.approx(truth, rel=1e-7)
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-12, max_iter=300).step(batch)
    assert record.kind == "preconditioned"
    assert record.ratio == pytest.approx(truth / threshold, rel=1e-7)
