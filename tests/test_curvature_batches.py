"""Batch forms the curvature functions take: ``dtype=`` casts floating tensors nested in the
inputs (a tuple, list or dict handed to ``model``) as it casts a tensor; against dense float64
truth."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import dense_hessian

import catapult


class TwoInputs(nn.Module):
    """``model({"a": x, "b": s})`` or ``model((x, s))``: a Linear of ``x`` scaled by ``s``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, inputs):
        x, s = (inputs["a"], inputs["b"]) if isinstance(inputs, dict) else inputs
        return torch.tanh(self.lin(x)) * s


@pytest.mark.parametrize("form", [dict, tuple, list])
def test_float64_solve_of_a_float32_model_with_nested_inputs(form):
    # the nested float32 tensors met float64 weights: "mat1 and mat2 must have the same dtype"
    torch.manual_seed(0)
    model = TwoInputs()
    x, s, y = torch.randn(8, 3), torch.randn(8, 2), torch.randn(8, 2)
    inputs = {"a": x, "b": s} if form is dict else form((x, s))
    loss_fn = nn.MSELoss()
    # the truth takes the two inputs as one tensor (dense_hessian casts a tensor only)
    joined = nn.Module()
    joined.inner = model
    joined.forward = lambda xs: model((xs[:, :3], xs[:, 3:]))
    H = dense_hessian(joined, loss_fn, (torch.cat([x, s], 1), y))
    truth = np.linalg.eigvalsh(H.numpy())
    est = catapult.sharpness(model, loss_fn, (inputs, y), dtype=torch.float64, tol=1e-10)
    assert est.converged and est.vector.dtype == torch.float64
    assert est.value == pytest.approx(truth[-1], rel=1e-9)
    eig = catapult.top_eigenpairs(model, loss_fn, (inputs, y), k=2, dtype=torch.float64,
                                  tol=1e-10, curvature="ggn")
    assert eig.converged and all(np.isfinite(eig.values))
    trace = catapult.hessian_trace(model, loss_fn, (inputs, y), dtype=torch.float64,
                                   matvecs=100)
    assert trace == pytest.approx(truth.sum(), rel=1e-9)
    assert model.lin.weight.dtype == torch.float32 and x.dtype == torch.float32
