"""Param groups whose lrs (or weight decays) are a few ulps apart, as a schedule's arithmetic leaves
them, take the same step up to its own rounding: the rule (``unpreconditioned_kind``,
``group_decays``) calls them alike, so ``SharpnessTracker`` measures the Hessian's sharpness with
``memory=`` (it refused: the lr-scaled sharpness takes no ``memory``) and ``kind="hessian"`` is not
refused as 'groups that decay differently' (weight_decay '0.1, 0.1'). Truth: the dense Hessian."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import catapult
from catapult.optim.thresholds import group_decays, unpreconditioned_kind
from dense_curvature import dense_hessian

LOSS = torch.nn.MSELoss()
ULP_UP = math.nextafter(0.1, 1.0)   # 0.1 and the next float64


def problem(dtype=torch.float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(dtype)
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(12, 3, generator=gen).to(dtype), torch.randn(12, 1, generator=gen).to(dtype))
    return model, batch


def two_groups(model, head, **body):
    return torch.optim.SGD([dict({"params": list(model[0].parameters())}, **body),
                            dict({"params": list(model[2].parameters())}, **head)], lr=0.1)


def test_lrs_and_decays_one_ulp_apart_are_alike():
    model, _ = problem()
    params = list(model.parameters())
    assert unpreconditioned_kind(two_groups(model, {"lr": ULP_UP}), params) == "hessian"
    assert len(group_decays(two_groups(model, {"weight_decay": ULP_UP}, weight_decay=0.1))) == 1
    # lrs or decays truly apart stay apart: 1e-9 relative at float64, or a decay beside none
    assert unpreconditioned_kind(two_groups(model, {"lr": 0.1 * (1 + 1e-9)}), params) == "lr_scaled"
    assert len(group_decays(two_groups(model, {"weight_decay": 1e-300}))) == 2


def test_the_tolerance_is_the_parameters_precision():
    f32 = float(np.float32(0.1))   # 0.1 through float32: 1.5e-8 relative, below float32's ulp, above float64's
    model, _ = problem(torch.float32)
    assert unpreconditioned_kind(two_groups(model, {"lr": f32}), list(model.parameters())) == "hessian"
    model, _ = problem(torch.float64)
    assert unpreconditioned_kind(two_groups(model, {"lr": f32}), list(model.parameters())) == "lr_scaled"


def test_the_tracker_measures_groups_one_ulp_apart_as_the_hessian():
    model, batch = problem()
    top = float(np.linalg.eigvalsh(dense_hessian(model, LOSS, batch).numpy())[-1])
    # before: kind 'lr_scaled', refused ('memory' is not an option of the lr-scaled sharpness)
    record = catapult.SharpnessTracker(model, LOSS, two_groups(model, {"lr": ULP_UP}), memory="fast",
                                       tol=1e-12, max_iter=200).step(batch)
    assert record.kind == "hessian" and record.value == pytest.approx(top, rel=1e-9)
    # before: refused, 'param groups that decay differently (weight_decay 0.1, 0.1)'
    opt = two_groups(model, {"weight_decay": ULP_UP}, weight_decay=0.1)
    record = catapult.SharpnessTracker(model, LOSS, opt, kind="hessian", tol=1e-12, max_iter=200).step(batch)
    assert record.kind == "hessian" and record.value == pytest.approx(top, rel=1e-9)


def test_alike_is_within_four_ulps_inclusive():
    """(mutation pass 19) float64 parameters: lrs 1 and 1 + 4 ulps are alike, 5 ulps apart not; decays
    1 and 1 - 4 * 2**-52 (exactly 4 ulps of the larger) alike, 5 apart not. TA2 (4000 ulps) took 5
    ulps alike; TA5 (a strict bound) and TA6 (ulps of the smaller) took the 4 apart."""
    model, _ = problem()
    params, e = list(model.parameters()), 2.0 ** -52
    assert unpreconditioned_kind(two_groups(model, {"lr": 1 + 4 * e}, lr=1.0), params) == "hessian"
    assert unpreconditioned_kind(two_groups(model, {"lr": 1 + 5 * e}, lr=1.0), params) == "lr_scaled"
    assert group_decays(two_groups(model, {"weight_decay": 1 - 4 * e}, weight_decay=1.0)) == {(1.0, False)}
    assert len(group_decays(two_groups(model, {"weight_decay": 1 - 5 * e}, weight_decay=1.0))) == 2


def test_mixed_precisions_take_the_finest():
    """(mutation pass 19, TA4) float64 and float32 parameters: the tolerance is float64's, so lrs 0.1
    and float32's 0.1 (1.5e-8 apart) differ (TA4 took the coarsest precision, float32's: alike)."""
    model, _ = problem(torch.float64)
    model[2].float()
    f32 = float(np.float32(0.1))
    assert unpreconditioned_kind(two_groups(model, {"lr": f32}), list(model.parameters())) == "lr_scaled"
    assert len(group_decays(two_groups(model, {"weight_decay": f32}, weight_decay=0.1))) == 2


@pytest.mark.parametrize("dtype, apart", [(torch.bfloat16, 1.5e-2), (torch.float16, 3e-3)])
def test_half_precision_parameters_keep_lrs_apart_at_float32s_ulp(dtype, apart):
    """S: lrs ``apart`` (relative) are different steps for half-precision parameters: torch forms
    ``lr * g`` in float32 on CUDA (opmath), and even where the CPU rounds ``lr`` to the parameters'
    dtype first these lrs round apart (more than 1 ulp). They were alike to within 4 ulps of bf16 (3%)
    or fp16 (0.4%): kind 'hessian', the tracker's lambda_max(H) for the lr-scaled operator at tol 1e-12
    (2.5% low at bf16). Truth: the dense float64 ``M^1/2 H M^1/2`` of the same, exactly widened, weights."""
    model, batch = problem(dtype)
    params = list(model.parameters())
    head_lr = 0.1 * (1 + apart)
    assert torch.tensor(0.1, dtype=dtype) != torch.tensor(head_lr, dtype=dtype)   # apart in the dtype too
    opt = two_groups(model, {"lr": head_lr})
    assert unpreconditioned_kind(opt, params) == "lr_scaled"
    assert len(group_decays(two_groups(model, {"weight_decay": head_lr}, weight_decay=0.1))) == 2
    # a float32 rounding apart is still alike for them (float32 is the finest the step forms lr * g in)
    assert unpreconditioned_kind(two_groups(model, {"lr": float(np.float32(0.1))}), params) == "hessian"
    H = dense_hessian(model, LOSS, batch).numpy()
    body = sum(p.numel() for p in model[0].parameters())
    m = np.sqrt(np.r_[np.ones(body), np.full(H.shape[0] - body, head_lr / 0.1)])
    truth = float(np.linalg.eigvalsh(m[:, None] * H * m[None, :])[-1])
    record = catapult.SharpnessTracker(model, LOSS, opt, dtype=torch.float64, tol=1e-12, max_iter=200).step(batch)
    assert record.kind == "lr_scaled" and record.value == pytest.approx(truth, rel=1e-9)


def test_a_frozen_parameter_does_not_set_the_precision():
    """(mutation pass 19, TA15) float32 trainable parameters beside a frozen float64 one in the same
    group: the decays' tolerance is float32's (the step moves float32 values only), so 0.1 and
    float32's 0.1 are one decay (TA15 let the frozen float64 parameter set it: two)."""
    model, _ = problem(torch.float32)
    frozen = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64), requires_grad=False)
    opt = torch.optim.SGD([{"params": [*model[0].parameters(), frozen], "weight_decay": 0.1},
                           {"params": list(model[2].parameters()), "weight_decay": float(np.float32(0.1))}], lr=0.1)
    assert group_decays(opt) == {(0.1, False)}
