"""A forward that draws from NumPy's global generator or Python's ``random`` (a noise layer
written with ``np.random``) sees the same draws in every product of one solve, as it sees torch's
(dropout), and the caller's NumPy and ``random`` streams are left as they were. Before, each
product drew fresh noise (two products of one vector differed: ``H`` was no fixed matrix) and the
solve advanced the caller's streams, against the README's promise."""
import random

import numpy as np
import pytest
import torch

from catapult.curvature import HessianOperator


class HostNoise(torch.nn.Module):
    """``y = s * w . x`` with ``s`` drawn per forward from NumPy's global generator (``source='numpy'``)
    or from ``random`` (``'random'``): the Hessian of the MSE is ``2 s^2 x x^T / n`` for the drawn ``s``."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source
        self.w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))

    def forward(self, x):
        s = 1.0 + float(np.random.rand()) if self.source == "numpy" else 1.0 + random.random()
        return s * (x @ self.w)


def _states():
    return np.random.get_state(), random.getstate()


def _same_states(a, b):
    (np_a, py_a), (np_b, py_b) = a, b
    return (np_a[0] == np_b[0] and np.array_equal(np_a[1], np_b[1]) and np_a[2:] == np_b[2:]
            and py_a == py_b)


@pytest.mark.parametrize("source", ["numpy", "random"])
@pytest.mark.parametrize("hvp", ["forward_over_reverse", "finite_difference"])
def test_every_product_sees_the_same_host_draws_and_the_streams_are_kept(source, hvp):
    torch.manual_seed(0)
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(8, dtype=torch.float64)
    np.random.seed(123)
    random.seed(123)
    before = _states()
    op = HessianOperator(HostNoise(source), torch.nn.MSELoss(), (x, y), hvp=hvp)
    dense = torch.stack([op(e) for e in torch.eye(3, dtype=torch.float64)], dim=1)
    again = torch.stack([op(e) for e in torch.eye(3, dtype=torch.float64)], dim=1)
    assert _same_states(before, _states())
    # the truth: 2 s^2 x^T x / n for one s in [1, 2), the same s in every product
    gram = 2.0 * (x.T @ x) / x.shape[0]
    s2 = (dense / gram)
    assert torch.allclose(s2, s2[0, 0].expand(3, 3), rtol=1e-6, atol=0.0)
    assert 1.0 <= float(s2[0, 0]) < 4.0
    assert torch.allclose(again, dense, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("source", ["numpy", "random"])
def test_critical_lr_trials_see_the_draws_of_its_first_forward_and_keep_the_streams(source):
    from catapult.critical_lr import critical_lr
    torch.manual_seed(1)
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(8, dtype=torch.float64)
    model = HostNoise(source)
    np.random.seed(7)
    random.seed(7)
    before = _states()
    # every forward (L0, its gradient, each trial) starts from the caller's streams: s is their next draw
    s = 1.0 + (np.random.RandomState(7).rand() if source == "numpy" else random.Random(7).random())
    w = model.w.detach().clone()
    gram = 2.0 * s * s * (x.T @ x) / x.shape[0]
    g = 2.0 * s * x.T @ (s * (x @ w) - y) / x.shape[0]
    lr_true = float(2.0 * (g @ g) / (g @ gram @ g))   # L(w - lr g) > L(w) past it (a quadratic)
    result = critical_lr(model, torch.nn.MSELoss(), (x, y), torch.optim.SGD(model.parameters(), lr=0.1),
                         lr_start=1e-3, rtol=1e-3)
    assert _same_states(before, _states())
    assert result.lower <= lr_true <= result.upper
    assert result.upper <= lr_true * (1 + 2e-3)
