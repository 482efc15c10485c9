"""The engine's persistent warmup (``engine.persistent_warmup.RunPersistentWarmup``) where a search
has no lr to measure (Adam with ``eps = 0`` and a gradient entry of 0: the step direction is 0/0):
the run keeps the lr it had (``lr_start`` before any search), on every group times its ``lr_mult``,
and counts the step."""
from __future__ import annotations

import pytest
import torch

from catapult.engine.persistent_warmup import RunPersistentWarmup


def test_the_first_search_without_an_lr_sets_lr_start_times_each_group_s_multiplier():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    model = torch.nn.Sequential(a, b)
    opt = torch.optim.Adam([{"params": a.parameters(), "lr_mult": 1.0},
                            {"params": b.parameters(), "lr_mult": 0.25}], eps=0.0)
    pcw = RunPersistentWarmup(opt, model, torch.nn.MSELoss(), lr_target=0.1, delta=0.01, lr_start=1e-3)
    batch = (torch.tensor([[1.0, 0.0]]), torch.ones(1, 1))   # a's second column has gradient 0
    assert pcw.step(batch) == 1e-3
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 2.5e-4], rel=1e-12, abs=0)
    assert (pcw.steps, pcw.searches) == (1, 0)


def test_a_later_search_without_an_lr_keeps_the_lr_found_before():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    opt = torch.optim.Adam(model.parameters(), eps=0.0)
    pcw = RunPersistentWarmup(opt, model, torch.nn.MSELoss(), lr_target=10.0, delta=0.01, lr_start=1e-3)
    found = pcw.step((torch.tensor([[1.0, 1.0]]), torch.ones(1, 1)))   # every entry moves: a search
    assert pcw.searches == 1 and 1e-3 < found < 10.0 and not pcw.done   # below the target: it searches on
    # a loss below the reference asks for a search, on a batch whose second entry has gradient 0
    assert pcw.step((torch.tensor([[1.0, 0.0]]), torch.ones(1, 1)), loss=0.0) == found
    assert opt.param_groups[0]["lr"] == found and (pcw.steps, pcw.searches) == (2, 1)
