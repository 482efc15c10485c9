"""Spectral norm in train mode runs a power iteration (without grad) in every forward, from the stored
vectors at the weight it is given: the gradients that finite differences subtract hold different
vectors at ``theta + h u`` and ``theta - h u``, so the difference operator was 6% asymmetric and its
sharpness 0.45% off the exact modes', marked converged. Such products are refused (naming the
module and ``model.eval()``); the exact modes, and every mode in eval mode, match a dense Hessian."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

import catapult
from catapult.curvature.hessian import HessianOperator
from dense_curvature import dense_hessian
from torch_features import FSDP2


def _problem(legacy: bool):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = (torch.nn.utils.spectral_norm if legacy else spectral_norm)(nn.Linear(3, 4))
    model = nn.Sequential(first, nn.Tanh(), nn.Linear(4, 2)).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    return model, batch


@pytest.mark.parametrize("legacy", [False, True])
def test_finite_differences_refuse_a_train_mode_spectral_norm(legacy):
    model, batch = _problem(legacy)
    with pytest.raises(ValueError, match="hvp='finite_difference': module '0' is under spectral norm in train mode.*"
                                         r"model\.eval\(\)"):
        catapult.sharpness(model, nn.MSELoss(), batch, hvp="finite_difference")
    # the exact products hold the vectors of this forward's iteration: a symmetric matrix, the dense one's
    op = HessianOperator(model, nn.MSELoss(), batch)
    H = torch.stack([op(e) for e in torch.eye(op.numel, dtype=torch.float64)])
    assert float((H - H.T).abs().max()) <= 1e-12 * float(H.abs().max())
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()    # the stored vectors, no iteration: every mode measures the same matrix
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]
    for hvp in ("double_backprop", "finite_difference"):
        est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, hvp=hvp)
        assert est.value == pytest.approx(truth, rel=1e-8), hvp
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())   # the vectors left alone


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@FSDP2
def test_a_sharded_model_refuses_it_too_and_stays_usable():
    # FSDP2's products are finite differences: 3.8931 in train mode where eval mode (the stored vectors) has 3.8778
    from torch.distributed.fsdp import fully_shard

    from catapult.curvature.distributed import single_process_group

    model, batch = _problem(False)
    reference = _problem(False)[0].eval()
    truth = np.linalg.eigvalsh(dense_hessian(reference, nn.MSELoss(), batch).numpy())[-1]
    with single_process_group():
        sharded = fully_shard(model)
        with pytest.raises(ValueError, match="module '0' is under spectral norm in train mode"):
            catapult.sharpness(sharded, nn.MSELoss(), batch, distributed=True)
        # critical_lr steps along the training's own gradient (power iteration and all), after the refusal too
        lr = catapult.critical_lr(sharded, nn.MSELoss(), batch, torch.optim.SGD(sharded.parameters(), lr=0.1),
                                  distributed=True).lr
        sharded.eval()
        est = catapult.sharpness(sharded, nn.MSELoss(), batch, tol=1e-9, distributed=True)
    plain = _problem(False)[0]
    assert lr == catapult.critical_lr(plain, nn.MSELoss(), batch, torch.optim.SGD(plain.parameters(), lr=0.1)).lr
    assert est.value == pytest.approx(truth, rel=1e-7)
