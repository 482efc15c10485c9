"""Curvature functions called inside ``torch.nn.utils.parametrize.cached()`` (a user's evaluation or
training step): a parametrized weight was computed once and reused by every later forward, so the
forwards at other parameters (finite differences, micro-batches, critical_lr's trial steps) read the
first one's value (sharpness 19% off a dense Hessian, converged), and forward over reverse raised a
TypeError. Every forward now computes it afresh; the caller's cache is left on."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.utils.parametrize as P
from torch import nn

import catapult
from dense_curvature import dense_hessian


class Symmetric(nn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).T


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    P.register_parametrization(model[0], "weight", Symmetric())
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    return model, batch


@pytest.mark.parametrize("kwargs", [{}, {"hvp": "forward_over_reverse"}, {"hvp": "finite_difference"},
                                    {"chunk_size": 3}, {"hvp": "compiled"}, {"memory": "lean"}])
def test_sharpness_inside_parametrize_cached(kwargs):
    model, batch = _problem()
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]
    with warnings.catch_warnings(), P.cached():
        warnings.simplefilter("ignore")
        model(batch[0])                       # the user's own forward fills the cache first
        est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, **kwargs)
        assert P._cache_enabled == 1
    assert est.converged and est.value == pytest.approx(truth, rel=1e-8)


def test_critical_lr_inside_parametrize_cached():
    # the loss along the step: L(lr) = loss at theta - lr u, by the formula's own forward
    model, batch = _problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with P.cached():
        model(batch[0])
        inside = catapult.critical_lr(model, nn.MSELoss(), batch, optimizer)
    outside = catapult.critical_lr(model, nn.MSELoss(), batch, optimizer)
    assert inside.lr == outside.lr
    # the bracket (the search's definition, delta 0.1): L0 < L(upper) <= L0 + 0.1 |L0| and L(lower) <= L0
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(nn.MSELoss()(model(batch[0]), batch[1]), params)

    def loss_at(lr):
        with torch.no_grad():
            saved = [p.clone() for p in params]
            for p, g in zip(params, grads):
                p.sub_(lr * g)
            value = float(nn.MSELoss()(model(batch[0]), batch[1]))
            for p, s in zip(params, saved):
                p.copy_(s)
        return value

    l0 = loss_at(0.0)
    assert l0 < loss_at(inside.upper) <= l0 + 0.1 * abs(l0) and loss_at(inside.lower) <= l0
