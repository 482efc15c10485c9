"""A model (or loss_fn) that writes its input in place (``x.mul_(1.1)``) moves the batch again in every
forward, so each Hessian-vector product, and each of critical_lr's trials, saw another batch: the
Gauss-Newton sharpness came out 1.9173 for the 1.8192 of the same model writing ``x * 1.1``, converged;
micro-batches were refused as a loss neither mean nor sum, hvp='compiled' raised torch's error after
scaling the batch 23-fold, the exact modes raised torch's raw errors. Every mode now refuses it after the
first forward, naming the write."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import catapult


class WritesInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        x.mul_(1.1)
        return self.b(torch.tanh(self.a(x)))


def _problem():
    torch.manual_seed(0)
    return WritesInput().double(), (torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))


@pytest.mark.parametrize("kwargs", [{}, {"hvp": "forward_over_reverse"}, {"hvp": "finite_difference"},
                                    {"hvp": "compiled"}, {"chunk_size": 4}, {"curvature": "ggn"}])
def test_curvature_refuses_a_forward_that_writes_its_batch(kwargs):
    model, (x, y) = _problem()
    first = x.clone()
    with pytest.raises(ValueError, match="the forward \\(the model or loss_fn\\) writes the batch in place"):
        catapult.sharpness(model, nn.MSELoss(), (x, y), **kwargs)
    assert torch.allclose(x, 1.1 * first)   # one forward ran (the user's own writes it the same)


def test_critical_lr_refuses_it_too():
    model, batch = _problem()
    with pytest.raises(ValueError, match="critical_lr: the forward .* writes the batch in place"):
        catapult.critical_lr(model, nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_forward_that_writes_a_copy_is_measured():
    class Copies(WritesInput):
        def forward(self, x):
            return super().forward(x.clone())

    torch.manual_seed(0)
    model = Copies().double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def loss(flat):
        w1, b1, w2, b2 = (t.view_as(p) for t, p in zip(flat.split(sizes), params))
        return (((torch.tanh(1.1 * x @ w1.T + b1) @ w2.T + b2) - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    truth = float(torch.linalg.eigvalsh(hessian)[-1])
    for kwargs in ({}, {"chunk_size": 4}):
        value = catapult.sharpness(model, nn.MSELoss(), (x, y), tol=1e-9, **kwargs).value
        assert value == pytest.approx(truth, rel=1e-7)


@pytest.mark.parametrize("kwargs", [{}, {"hvp": "finite_difference"}])
def test_a_loss_fn_that_writes_the_targets_is_refused(kwargs):
    # label smoothing written in place (y.mul_(0.9).add_(0.05)): every forward smoothed the targets again
    class Plain(WritesInput):
        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    torch.manual_seed(0)
    model, x, y = Plain().double(), torch.randn(8, 4, dtype=torch.float64), torch.rand(8, 3, dtype=torch.float64)

    def smoothed(out, targets):
        return nn.functional.mse_loss(out, targets.mul_(0.9).add_(0.05))

    with pytest.raises(ValueError, match="the forward \\(the model or loss_fn\\) writes the batch in place"):
        catapult.sharpness(model, smoothed, (x, y), **kwargs)
