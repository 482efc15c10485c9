"""A param group of weight decay 0 decays nothing, coupled or decoupled: ``group_decays`` counted a
wd-0 group flagged ``decoupled_weight_decay=True`` beside an unflagged wd-0 one as two decays, so
RAdam's un-rectified step over them was measured as ``lr_scaled`` (not the Hessian's sharpness) and
``SharpnessTracker(kind="hessian")`` was refused ("param groups that decay differently
(weight_decay 0, 0 decoupled)"). Truth: torch's own RAdam steps, which move the parameters bit for
bit alike with the flag on or off at weight decay 0, and a dense float64 Hessian's top eigenvalue."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.optim.thresholds import group_decays, unpreconditioned_kind
from dense_curvature import dense_hessian

MSE = nn.MSELoss()


def _model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(1)
    return model, (torch.randn(10, 3, generator=gen, dtype=torch.float64),
                   torch.randn(10, 2, generator=gen, dtype=torch.float64))


def _radam(model, flag: bool):
    return torch.optim.RAdam([{"params": model[0].parameters()},
                              {"params": model[2].parameters(), "decoupled_weight_decay": flag}],
                             lr=0.01, weight_decay=0.0)


def _steps_alike() -> bool:
    """Whether 8 RAdam steps move the parameters bit for bit alike with the flag off and on."""
    moved = []
    for flag in (False, True):
        model, batch = _model_and_batch()
        opt = _radam(model, flag)
        for _ in range(8):   # un-rectified steps, then rectified ones (beta2 0.999: from step 6)
            opt.zero_grad()
            MSE(model(batch[0]), batch[1]).backward()
            opt.step()
        moved.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return torch.equal(moved[0], moved[1])


def test_wd_0_groups_are_one_decay_whatever_their_flag():
    assert _steps_alike()   # the truth: at weight decay 0 the flag changes no step
    model, batch = _model_and_batch()
    opt = _radam(model, True)
    assert group_decays(opt) == {(0.0, False)}
    assert unpreconditioned_kind(opt, list(model.parameters())) == "hessian"
    decayed = torch.optim.RAdam([{"params": model[0].parameters(), "weight_decay": 0.1},
                                 {"params": model[2].parameters(), "weight_decay": 0.1,
                                  "decoupled_weight_decay": True}], lr=0.01)
    assert group_decays(decayed) == {(0.1, False), (0.1, True)}   # a decay's kind still counts


def test_the_tracker_measures_the_hessians_sharpness_there():
    model, batch = _model_and_batch()
    opt = _radam(model, True)
    record = catapult.SharpnessTracker(model, MSE, opt, kind="hessian", tol=1e-11, max_iter=300).step(batch)
    auto = catapult.SharpnessTracker(model, MSE, opt, tol=1e-11, max_iter=300).step(batch)
    top = float(np.linalg.eigvalsh(dense_hessian(model, MSE, batch).numpy())[-1])
    assert record.kind == auto.kind == "hessian"
    assert record.value == pytest.approx(top, rel=1e-8) and auto.value == pytest.approx(top, rel=1e-8)
