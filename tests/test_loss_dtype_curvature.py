"""A float64 model whose ``loss_fn`` returns a float32 scalar: its derivatives are float64 (the cast's
backward is a cast), so micro-batches must neither be refused (the mean/sum test compared
float32-rounded losses at float64's tolerance) nor be weighted in float32 (a weight folded into a
float32 loss is rounded to float32 by its backward). Truth: the dense float64 Hessian of the
float64 loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import dense_hessian

import catapult


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batch = (torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64))
    return model, batch


def float32_loss(out, target):
    return nn.functional.mse_loss(out, target).float()


@pytest.mark.parametrize("kwargs", [{"memory": "lean"}, {"chunk_size": 5}, {"chunk_size": 5, "hvp": "finite_difference"},
                                    {"chunk_size": 2, "curvature": "ggn"}])
def test_a_float32_loss_of_a_float64_model_is_measured_in_micro_batches(kwargs):
    model, batch = problem()
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())
    if kwargs.get("curvature") == "ggn":
        from dense_curvature import dense_ggn
        truth = np.linalg.eigvalsh(dense_ggn(model, nn.MSELoss(), batch))
    # before: memory='lean' (micro-batches of 2) refused 'neither a mean nor a sum over samples
    # (full batch 0.970059, chunks' mean 0.970059 ...)'; once told, 3e-8 off, converged at 3e-11
    est = catapult.sharpness(model, float32_loss, batch, tol=1e-10, **kwargs)
    assert est.converged
    assert abs(est.value - truth[-1]) <= max(2 * est.error_bound, 1e-12) * truth[-1]


@pytest.mark.parametrize("kwargs", [{"memory": "lean"}, {"chunk_size": 4}])
def test_a_bfloat16_loss_of_a_float32_model_is_measured_in_micro_batches(kwargs):
    model, batch = problem()
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]
    model.float()
    x, y = batch[0].float(), batch[1].float()

    def bfloat16_loss(out, target):
        return nn.functional.mse_loss(out, target).to(torch.bfloat16)

    # before: 400 bfloat16 eps (3.1) took the loss for both a mean and a sum: refused as
    # 'cannot tell ... since its loss is 0 here and nearby (full batch 0.484375, ...)'
    est = catapult.sharpness(model, bfloat16_loss, (x, y), tol=1e-5, **kwargs)
    assert est.value == pytest.approx(truth, rel=1e-5)
