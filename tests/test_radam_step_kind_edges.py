"""optim.thresholds.radam_step_kind reads the first param group's beta2 (mutation pass 15): torch
RAdam's step t is rectified once rho_t = rho_inf - 2 t b2^t / (1 - b2^t) > 5, rho_inf =
2 / (1 - b2) - 1 (computed here), so b2 = 0.999 rectifies step 6 and b2 = 0.5 (rho_inf = 3) never;
beta1 plays no part."""
from __future__ import annotations

import torch

from catapult.optim.thresholds import radam_step_kind


def _rho(t, b2):
    return 2 / (1 - b2) - 1 - 2 * t * b2 ** t / (1 - b2 ** t)


def test_the_first_groups_beta2_decides():
    assert _rho(5, 0.999) < 5 < _rho(6, 0.999) and 2 / (1 - 0.5) - 1 == 3
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.RAdam([{"params": [a], "betas": (0.5, 0.999)}, {"params": [b], "betas": (0.9, 0.5)}])
    assert [radam_step_kind(opt, t) for t in (5, 6, 50)] == ["hessian", "preconditioned", "preconditioned"]
    other = torch.optim.RAdam([{"params": [b], "betas": (0.9, 0.5)}, {"params": [a], "betas": (0.5, 0.999)}])
    assert [radam_step_kind(other, t) for t in (6, 50)] == ["hessian", "hessian"]
