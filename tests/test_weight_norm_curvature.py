"""Curvature of a model under weight norm, against the same loss with ``W = g v / ||v||`` written
out by hand (whose dense Hessian torch's autograd takes right): torch's fused weight-norm kernel
has a wrong double backward and no forward-AD formula (``catapult.curvature.twice``)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from dense_curvature import dense_ggn, dense_hessian

import catapult
from catapult.curvature.hessian import HessianOperator
from catapult.curvature.twice import weight_norm_module


class ByHand(nn.Module):
    """``Linear(5, 6)`` with ``W = g v / ||v||`` (norms over ``dim``), ``tanh``, ``Linear(6, 3)``."""

    def __init__(self, g, v, bias, out: nn.Linear, dim: int):
        super().__init__()
        self.g, self.v, self.bias = (nn.Parameter(t.detach().clone()) for t in (g, v, bias))
        self.out, self.dim = out, dim

    def forward(self, x):
        other = 1 - self.dim
        weight = self.g * self.v / self.v.norm(dim=other, keepdim=True)
        return self.out(torch.tanh(F.linear(x, weight, self.bias)))


def problem(kind: str, dim: int):
    torch.manual_seed(0)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    first = nn.Linear(5, 6).double()
    with torch.no_grad():
        first.weight.mul_(3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy weight_norm is deprecated
        if kind == "parametrization":
            layer = weight_norm(first, dim=dim)
            g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
        else:
            layer = torch.nn.utils.weight_norm(first, dim=dim)
            g, v = layer.weight_g, layer.weight_v
    out = nn.Linear(6, 3).double()
    model = nn.Sequential(layer, nn.Tanh(), out)
    return model, ByHand(g, v, first.bias, out, dim), (x, y)


@pytest.mark.parametrize("kind", ["parametrization", "legacy"])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("hvp", ["double_backprop", "forward_over_reverse"])
def test_sharpness_of_a_weight_normed_model_is_the_hand_written_losses(kind, dim, hvp):
    model, hand, batch = problem(kind, dim)
    truth = np.linalg.eigvalsh(dense_hessian(hand, F.cross_entropy, batch).numpy())[::-1]
    # before: double backprop 2.6e-4 off the top with error_bound 5e-9, forward-over-reverse raised
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-8, hvp=hvp)
    assert est.converged
    assert abs(est.value - truth[0]) <= 1e-7 * truth[0]
    eig = catapult.top_eigenpairs(model, F.cross_entropy, batch, k=3, tol=1e-8, hvp=hvp)
    np.testing.assert_allclose(eig.values, truth[:3], rtol=1e-7)


def test_hessian_products_of_a_weight_normed_model_are_symmetric():
    model, hand, batch = problem("parametrization", 0)
    op = HessianOperator(model, F.cross_entropy, batch)
    dense = torch.stack([op(e) for e in torch.eye(op.numel, dtype=torch.float64)])
    assert (dense - dense.T).abs().max() <= 1e-12   # 0.23 before
    truth = np.linalg.eigvalsh(dense_hessian(hand, F.cross_entropy, batch).numpy())
    np.testing.assert_allclose(np.linalg.eigvalsh(dense.numpy()), truth, atol=1e-12)


def test_gauss_newton_of_a_weight_normed_model():
    model, hand, batch = problem("parametrization", 0)
    truth = np.linalg.eigvalsh(dense_ggn(hand, F.cross_entropy, batch))[::-1]
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-8, curvature="ggn")
    assert abs(est.value - truth[0]) <= 1e-7 * truth[0]


def test_compiled_products_refuse_weight_norm_naming_the_module():
    model, _, batch = problem("parametrization", 0)
    assert weight_norm_module(model) == "0"
    assert weight_norm_module(problem("legacy", 0)[0]) == "0"
    with pytest.raises(ValueError, match="hvp='compiled': module '0' is under weight norm"):
        catapult.sharpness(model, F.cross_entropy, batch, hvp="compiled")


class DirectCall(nn.Module):
    """:class:`ByHand`'s model with ``W`` from ``torch._weight_norm`` (or the
    ``_weight_norm_interface`` it runs) called in the forward: no weight-norm module to see."""

    def __init__(self, hand: ByHand, interface: bool):
        super().__init__()
        self.g, self.v, self.bias, self.out, self.dim = hand.g, hand.v, hand.bias, hand.out, hand.dim
        self.interface = interface

    def forward(self, x):
        if self.interface:
            weight = torch._weight_norm_interface(self.v, self.g, self.dim)[0]
        else:
            weight = torch._weight_norm(self.v, self.g, self.dim)
        return self.out(torch.tanh(F.linear(x, weight, self.bias)))


@pytest.mark.parametrize("interface", [False, True])
@pytest.mark.parametrize("dim", [0, 1])
def test_a_weight_norm_called_in_the_forward_is_taken_by_parts(interface, dim):
    _, hand, batch = problem("parametrization", dim)
    model = DirectCall(hand, interface)
    assert weight_norm_module(model) is None
    dense = dense_hessian(hand, F.cross_entropy, batch).numpy()
    truth = np.linalg.eigvalsh(dense)[::-1]
    # before: double backprop 3.4e-6 off the top (relative), "converged" with error_bound 6e-11;
    # forward-over-reverse raised "use hvp='finite_difference'"; the trace 0.9% off
    for hvp in ("double_backprop", "forward_over_reverse"):
        est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, hvp=hvp)
        assert est.converged and abs(est.value - truth[0]) <= 1e-8 * truth[0], hvp
    eig = catapult.top_eigenpairs(model, F.cross_entropy, batch, k=3, tol=1e-10)
    np.testing.assert_allclose(eig.values, truth[:3], rtol=1e-8)
    n = dense.shape[0]
    assert catapult.hessian_trace(model, F.cross_entropy, batch, matvecs=3 * n + 3) == pytest.approx(
        np.trace(dense), rel=1e-9)
    chunked = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, chunk_size=5)
    assert abs(chunked.value - truth[0]) <= 1e-8 * truth[0]


def test_compiled_products_refuse_a_weight_norm_called_in_the_forward():
    _, hand, batch = problem("parametrization", 0)
    with pytest.raises(ValueError, match="hvp='compiled': the loss goes through torch's fused weight norm"):
        catapult.sharpness(DirectCall(hand, False), F.cross_entropy, batch, hvp="compiled")
