"""Plain norms left in the curvature package, on values of any scale: the finite-difference product
``H v`` of a public :class:`HessianOperator` (``hvp="finite_difference"``) divides its step by
``||v||``, and the custom-Function check compares norms of products of the loss. Before, ``v`` of
norm < ~1e-154 gave ``H v = 0`` and one past ~1e154 ``nan``; under a loss times 2**531 / 2**-664 a
custom Function with wrong second derivatives went unrefused (its norms inf / 0: 0.9048 for 0.8903,
"converged"). Truth: 2**k times the plain product (exact: powers of two), the refusal at 2**0."""
import pytest
import torch
import torch.nn.functional as F

import catapult
from catapult.curvature import HessianOperator
from test_custom_function_curvature import NumpyTanh, TorchTanh, problem


@pytest.mark.parametrize("exponent", [-600, 600])
def test_a_difference_product_of_any_norm(exponent):
    model, batch, _ = problem(TorchTanh.apply)
    op = HessianOperator(model, F.cross_entropy, batch, hvp="finite_difference")
    v = torch.randn(op.numel, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = 2.0 ** exponent
    assert torch.equal(op(v * c), op(v) * c)
    assert torch.equal(op.forward_difference(v * c), op.forward_difference(v) * c)
    out = torch.zeros(op.numel, dtype=torch.float64)
    assert torch.equal(op.accumulate(v * c, out), op(v) * c)


@pytest.mark.parametrize("exponent", [531, -664])
def test_a_wrong_custom_function_is_refused_at_any_loss_scale(exponent):
    model, batch, truth = problem(NumpyTanh.apply)
    c = 2.0 ** exponent
    with pytest.raises(ValueError, match="custom autograd.Function NumpyTanh, whose second derivatives"):
        catapult.sharpness(model, lambda out, t: c * F.cross_entropy(out, t), batch, tol=1e-8)
    model, batch, truth = problem(TorchTanh.apply)   # a right one passes, the value 2**k times
    est = catapult.sharpness(model, lambda out, t: c * F.cross_entropy(out, t), batch, tol=1e-8)
    assert est.value / c == pytest.approx(truth[0], rel=1e-7)
