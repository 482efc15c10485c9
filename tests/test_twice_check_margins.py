"""catapult.curvature.twice's checks at their edges: the custom-Function check in float32 (where its
central difference's own error is ~1e-5 relative: a right Function must pass, and one whose second
derivative is 10% off in its tanh'' term, a sharpness 1.4e-3 off, must still be refused), and the
forward-over-reverse refusal of scatter_reduce, which is for reduce='prod' alone (the other
reductions' forward-mode derivatives are right: measured, not refused). Truth: the dense float64
Hessian of the same model with torch.tanh / the same scatter written out by autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import catapult
from dense_curvature import dense_hessian
from test_custom_function_curvature import TorchTanh, problem


class TenthOffTanh(TorchTanh):
    """tanh whose backward is exact, and whose second derivative keeps 0.9 of the tanh'' term."""

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        part = 0.9 * y + 0.1 * y.detach()     # the value of y; 0.9 of its derivative
        return grad * (1.0 - part * part)


def _float32(act):
    model, batch, truth = problem(act)
    return model.float(), (batch[0].float(), batch[1]), truth


def test_a_right_function_passes_the_check_in_float32():
    # the check's floor and margin are both needed: 'off > 1e-6 relative' alone refused it (3.5e-5 off
    # its float32 central difference, which is that difference's own error)
    model, batch, truth = _float32(TorchTanh.apply)
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-5)
    assert est.value == pytest.approx(truth[0], rel=1e-4)


def test_a_function_a_tenth_off_in_its_second_derivative_is_refused_in_float32():
    # with 100x the margin it passed: 0.891502 for 0.890255, silently
    model, batch, truth = _float32(TenthOffTanh.apply)
    with pytest.raises(ValueError, match="custom autograd.Function TenthOffTanh, whose second derivatives"):
        catapult.sharpness(model, F.cross_entropy, batch, tol=1e-5)


class Scatter(nn.Module):
    def __init__(self, reduce):
        super().__init__()
        self.lin, self.out, self.reduce = nn.Linear(3, 4), nn.Linear(2, 2), reduce

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        index = torch.tensor([0, 1, 0, 1]).expand_as(h)
        pooled = torch.zeros(h.shape[0], 2, dtype=h.dtype).scatter_reduce(1, index, h, reduce=self.reduce,
                                                                            include_self=False)
        return self.out(pooled)


@pytest.mark.parametrize("reduce", ["sum", "mean", "amax", "amin"])
def test_forward_over_reverse_measures_scatter_reduce_but_prod(reduce):
    torch.manual_seed(0)
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    torch.manual_seed(1)
    model = Scatter(reduce).double()
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]
    est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, hvp="forward_over_reverse")
    assert est.converged and est.value == pytest.approx(truth, rel=1e-9)
