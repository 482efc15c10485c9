"""A forward that writes the model's parameters in place (WGAN's weight clipping, clamp_ under no_grad; a
running value kept in a frozen Parameter) changed them in every curvature call, against the promise that
parameters are left as they were; forward over reverse raised torch's error on the write, and finite
differences read it as a kink. Every mode refuses it after the first forward, naming the parameter and the
way out (the write after optimizer.step, or a buffer, which every forward gets a copy of)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult


class Clips(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        with torch.no_grad():
            self.a.weight.clamp_(-0.3, 0.3)
        return self.b(torch.tanh(self.a(x)))


class Running(nn.Module):
    def __init__(self, buffer: bool = False):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)
        if buffer:
            self.register_buffer("center", torch.zeros(5))
        else:
            self.center = nn.Parameter(torch.zeros(5), requires_grad=False)

    def forward(self, x):
        h = self.a(x)
        with torch.no_grad():
            self.center.mul_(0.9).add_(0.1 * h.mean(0))
        return self.b(torch.tanh(h - self.center))


def _batch():
    return torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)


@pytest.mark.parametrize("make, name", [(Clips, "a.weight"), (Running, "center")])
@pytest.mark.parametrize("hvp", ["double_backprop", "forward_over_reverse", "finite_difference"])
def test_a_forward_that_writes_parameters_is_refused(make, name, hvp):
    torch.manual_seed(0)
    model, batch = make().double(), _batch()
    with pytest.raises(ValueError, match=f"the model's forward writes its parameter {name} in place.*register_buffer"):
        catapult.sharpness(model, nn.MSELoss(), batch, hvp=hvp)


def test_a_running_value_in_a_buffer_is_measured():
    # the buffer is copied for every forward: each starts from the same value, and the model's is left alone
    torch.manual_seed(0)
    model, batch = Running(buffer=True).double(), _batch()
    center = model.center.clone()
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9)
    assert torch.equal(model.center, center)
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]
    x, y = batch

    def loss(flat):   # the forward's function: center moved once from its value, as a constant
        w1, b1, w2, b2 = (t.view_as(p) for t, p in zip(flat.split(sizes), params))
        h = x @ w1.T + b1
        moved = 0.9 * center + 0.1 * h.detach().mean(0)
        return (((torch.tanh(h - moved) @ w2.T + b2) - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    assert estimate.value == pytest.approx(float(np.linalg.eigvalsh(hessian.numpy())[-1]), rel=1e-7)


def test_a_frozen_sparse_parameter_is_no_write():
    # a sparse adjacency kept as a frozen Parameter: the write check asked it for a data pointer it has not
    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.adjacency = nn.Parameter(torch.eye(8, dtype=torch.float64).to_sparse(), requires_grad=False)
            self.a = nn.Linear(4, 3).double()

        def forward(self, x):
            return torch.sparse.mm(self.adjacency, torch.tanh(self.a(x)))

    torch.manual_seed(0)
    model, batch = Graph(), (torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))
    params = [p.detach() for p in model.a.parameters()]
    x, y = batch

    def loss(flat):
        w, b = flat[:12].view(3, 4), flat[12:]
        return ((torch.tanh(x @ w.T + b) - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9)
    assert estimate.value == pytest.approx(float(np.linalg.eigvalsh(hessian.numpy())[-1]), rel=1e-7)


def test_a_storage_swap_that_keeps_the_values_is_no_write():
    # as cuDNN's flatten_parameters moves an RNN's weights into one buffer (set_: the version counter moves,
    # the values do not): the function is the plain one, and its Hessian is measured
    class Moves(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            with torch.no_grad():
                self.a.weight.set_(self.a.weight.detach().clone())
            return self.b(torch.tanh(self.a(x)))

    torch.manual_seed(0)
    model, batch = Moves().double(), _batch()
    params = [p.detach().clone() for p in model.parameters()]
    sizes = [p.numel() for p in params]
    x, y = batch

    def loss(flat):
        w1, b1, w2, b2 = (t.view_as(p) for t, p in zip(flat.split(sizes), params))
        return (((torch.tanh(x @ w1.T + b1) @ w2.T + b2) - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9)
    assert estimate.value == pytest.approx(float(np.linalg.eigvalsh(hessian.numpy())[-1]), rel=1e-7)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
