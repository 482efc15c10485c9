"""The Huber loss under forward-over-reverse HVPs (:mod:`catapult.curvature.forward_ad`) against
its closed form and torch's own second derivatives: on both pieces, at the seam ``|d| = delta``
(every residual there when a zero readout meets targets of +-delta), for each reduction and a
``delta`` other than 1."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from catapult.curvature.forward_ad import huber_from_definition, losses_for_forward_ad


def test_huber_from_definition_is_the_closed_form():
    d = torch.tensor([0.3, -2.0, 0.5, -0.5], dtype=torch.float64)
    # delta 0.5: d^2 / 2 inside, 0.5 (|d| - 0.25) outside; |d| = delta is the seam (both 0.125)
    want = torch.tensor([0.045, 0.875, 0.125, 0.125], dtype=torch.float64)
    got = huber_from_definition(d, torch.zeros(4, dtype=torch.float64), "none", delta=0.5)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
    zeros = torch.zeros(4, dtype=torch.float64)
    assert float(huber_from_definition(d, zeros, "sum", delta=0.5)) == pytest.approx(1.17, rel=1e-14, abs=0)
    assert float(huber_from_definition(d, zeros, delta=0.5)) == pytest.approx(1.17 / 4, rel=1e-14, abs=0)


def _hvps(loss_fn, x, y, w, v):
    """``(forward-over-reverse, reverse-over-reverse)`` products ``H v`` at ``w``."""
    loss = lambda w: loss_fn(x @ w, y)  # noqa: E731
    with losses_for_forward_ad():
        _, forward = torch.func.jvp(torch.func.grad(loss), (w,), (v,))
    return forward, torch.autograd.functional.hvp(loss, w, v)[1]


@pytest.mark.parametrize("loss_fn", [nn.HuberLoss(delta=0.5), nn.HuberLoss(reduction="sum", delta=0.5),
                                     lambda out, y: F.huber_loss(out, y, delta=0.5)])
def test_huber_hvp_matches_the_closed_form_on_both_pieces_and_at_the_seam(loss_fn):
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64)
    w = torch.zeros(3, 1, dtype=torch.float64)           # a zero readout: d = -y exactly
    y = torch.tensor([[0.5], [-0.5], [0.2], [-0.1], [2.0], [0.5]], dtype=torch.float64)
    v = torch.randn(3, 1, dtype=torch.float64)
    forward, reverse = _hvps(loss_fn, x, y, w, v)
    # H = X^T diag(1 where |d| < delta, else 0) X / (n for mean): torch's seam (|d| = delta) is
    # the linear piece, and so is the definition's
    inside = (y.abs() < 0.5).to(x.dtype)
    scale = 1.0 if getattr(loss_fn, "reduction", "mean") == "sum" else 1 / 6
    want = x.T @ (inside * (x @ v)) * scale
    torch.testing.assert_close(reverse, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(forward, want, rtol=1e-12, atol=1e-14)
