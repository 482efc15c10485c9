"""``catapult.engine.sharpness_rule.threshold`` (the engine's per-row threshold, public in its module)
given a fine-tuning optimizer: a body frozen first (``requires_grad=False``, or lr 0) and the head
after it at its own lr, betas and weight decay. The step moves the head only, so the threshold is the
head's closed form, as ``catapult.instability_threshold`` gives it. It read the first group's lr (and
RAdam's betas and decay): SGD 38 for the step's 76, inf for a body at lr 0 (the head's 40), AdamW
17999.91 for 1799.91, RAdam's step 8 the body's ``r_t`` and lr (S)."""
from __future__ import annotations

import math

import pytest
import torch

from catapult import instability_threshold
from catapult.engine.sharpness_rule import threshold
from catapult.optim.thresholds import radam_rectification


def _fine_tune(cls, body: dict, head: dict, freeze: bool = True):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model[0].requires_grad_(not freeze)
    return cls([{"params": model[0].parameters(), **body}, {"params": model[2].parameters(), **head}])


def test_sgd_takes_the_heads_lr():
    opt = _fine_tune(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, {"lr": 0.05, "momentum": 0.9})
    assert threshold(opt) == pytest.approx((2 + 2 * 0.9) / 0.05, rel=1e-12)      # 76
    assert threshold(opt) == pytest.approx(instability_threshold(opt), rel=1e-12)


def test_a_body_at_lr_0_is_passed_over():
    opt = _fine_tune(torch.optim.SGD, {"lr": 0.0}, {"lr": 0.05}, freeze=False)
    assert threshold(opt) == pytest.approx(2 / 0.05, rel=1e-12)                 # 40, not inf


def test_adamw_takes_the_heads_lr_betas_and_decay():
    opt = _fine_tune(torch.optim.AdamW, {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.5},
                     {"lr": 1e-2, "betas": (0.8, 0.999), "weight_decay": 0.01})
    b1 = 0.8   # (2 + 2 b1) / ((1 - b1) lr) - wd (1 + b1) / (1 - b1)
    assert threshold(opt) == pytest.approx((2 + 2 * b1) / ((1 - b1) * 1e-2) - 0.01 * (1 + b1) / (1 - b1), rel=1e-12)


def test_radam_rows_take_the_heads_step():
    opt = _fine_tune(torch.optim.RAdam, {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.5},
                     {"lr": 1e-2, "betas": (0.9, 0.999)})
    b2 = 0.999
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * 8 * b2 ** 8 / (1 - b2 ** 8)       # torch's step 8 (row 7), rectified
    r_8 = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    assert radam_rectification(8, b2) == pytest.approx(r_8, rel=1e-12)
    assert threshold(opt, step=7) == pytest.approx((2 + 2 * 0.9) / ((1 - 0.9) * r_8 * 1e-2), rel=1e-12)
    assert threshold(opt, step=0) == pytest.approx((2 + 2 * 0.9) / ((1 - 0.9) * 1e-2), rel=1e-12)   # un-rectified
