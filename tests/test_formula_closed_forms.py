"""Formulas a manual mutation pass found unpinned (the mutant survived every other test), each
against a hand computation."""
from __future__ import annotations

import torch

from catapult.schedules import PersistentCatapultWarmup


def test_persistent_warmup_search_is_capped_at_lr_target():
    """``L(lr) = (4 lr - 1)^2 / 2`` (critical lr 0.5) with ``lr_target = 0.25``: the doubling
    1/64, 1/32, 1/16, 1/8, 1/4 stops at the target, where the loss still falls: bracket
    ``[0.25, 0.25]`` after 1 + 5 forward passes (an uncapped search goes on past 0.5)."""
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pcw = PersistentCatapultWarmup(opt, model, torch.nn.MSELoss(), lr_target=0.25, lr_start=1 / 64)
    assert pcw.step(batch) == 0.25 and pcw.done
    entry = pcw.history[0]
    assert (entry["lower"], entry["upper"], entry["forward_passes"]) == (0.25, 0.25, 6)
