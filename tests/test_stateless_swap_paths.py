"""catapult.curvature.stateless on the paths the earlier tests left out: the Gauss-Newton products
(stateless.functional_call, not functional_loss) inside a caller's ``parametrize.cached()``, and a
TorchScript module that holds buffers but no parameters (which functional_call cannot swap either).
Truth: the dense float64 Gauss-Newton matrix; torch's own error for the swap."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.utils.parametrize as P
from torch import nn

import catapult
from dense_curvature import dense_ggn
from test_parametrize_cached_curvature import _problem


@pytest.mark.parametrize("kwargs", [{}, {"chunk_size": 3}])
def test_gauss_newton_inside_parametrize_cached_is_the_dense_matrix(kwargs):
    # functional_call's forward read the weight the user's forward had cached (made from the model's
    # own Parameter, not the operator's leaf): 1.4809 for 1.5503, converged
    model, batch = _problem()
    truth = np.linalg.eigvalsh(dense_ggn(model, nn.MSELoss(), batch))[-1]
    with P.cached():
        model(batch[0])
        est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, curvature="ggn", **kwargs)
        assert P._cache_enabled == 1
    assert est.converged and est.value == pytest.approx(truth, rel=1e-8)


def test_a_scripted_module_with_buffers_only_is_refused_naming_torchscript():
    # torch.jit.script(BatchNorm1d(affine=False)): running stats, no parameters; its buffers cannot be
    # swapped ("'OrderedDictWrapper' object has no attribute 'get'")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), torch.jit.script(nn.BatchNorm1d(3, affine=False))).double().eval()
    batch = (torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for call in (lambda: catapult.sharpness(model, nn.MSELoss(), batch),
                 lambda: catapult.sharpness(model, nn.MSELoss(), batch, curvature="ggn"),
                 lambda: catapult.critical_lr(model, nn.MSELoss(), batch, optimizer)):
        with pytest.raises(ValueError, match="TorchScript module"):
            call()


class _Shift(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.ones(1))

    def forward(self, x):
        return x + self.shift


def test_a_buffer_reached_by_two_paths_is_the_models_own_again_after_a_functional_call():
    # Mutation pass 22 (ST14): functional_call swaps a shared slot once per path and put the tensor
    # passed in back into the buffer slot, not the model's own buffer
    from catapult.curvature.stateless import functional_call

    inner = _Shift()
    model = nn.Sequential(inner, inner)
    own = inner.shift
    out = functional_call(model, {"0.shift": torch.full((1,), 3.0)}, (torch.zeros(1),))
    assert out.tolist() == [6.0]
    assert inner.shift is own and inner.shift.tolist() == [1.0]
