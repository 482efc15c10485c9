"""catapult.curvature.modes: the names ``hvp=`` and ``dtype=`` accept, resolved as their words say
(``resolve_hvp``, ``resolve_dtype`` are public through catapult.curvature.hessian)."""
from __future__ import annotations

import pytest
import torch

from catapult.curvature.hessian import HessianOperator, resolve_dtype, resolve_hvp


@pytest.mark.parametrize("hvp", ["bogus", "Double_Backprop", "", None])
def test_resolve_hvp_refuses_a_mode_that_does_not_exist(hvp):
    with pytest.raises(ValueError, match="hvp must be one of"):
        resolve_hvp(hvp, "cpu")


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps", "xpu"])
def test_auto_is_double_backprop_where_nothing_measured_otherwise(device):
    # forward-over-reverse refuses what double backprop measures (a scripted activation, a
    # scatter_reduce product, a Function without setup_context): "auto" on a device without a
    # measurement must not pick it
    assert resolve_hvp("auto", device) == "double_backprop"
    assert resolve_hvp("forward_over_reverse", device) == "forward_over_reverse"


def test_the_dtype_names_are_the_dtypes_they_name():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("float64") is torch.float64
    assert resolve_dtype(torch.float32) is torch.float32 and resolve_dtype(None) is None
    model = torch.nn.Linear(2, 1).double()
    batch = (torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64))
    op = HessianOperator(model, torch.nn.MSELoss(), batch, dtype="float32")
    assert op.dtype is torch.float32 and op(torch.ones(op.numel)).dtype is torch.float32
    for bad in ("float16", "double", torch.float16, torch.int64):
        with pytest.raises(ValueError, match="dtype must be None"):
            resolve_dtype(bad)
