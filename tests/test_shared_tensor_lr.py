"""Param groups that share one tensor lr: torch's optimizers give every group without an lr of its
own the constructor's ``lr`` object itself (``SGD(groups, lr=torch.tensor(0.0))``, and a later
``add_param_group``), and the schedules fill a tensor lr in place, so every group held the last
group's ``fn(t) * lr_mult``: a hidden group's 0.25 applied to all, or the head's 1 to the hidden
layers, without a word. Truth: ``fn(t) * lr_mult`` (the closed form) and, for SGD, each parameter's
displacement ``lr g`` with ``g = 1``."""
from __future__ import annotations

import pytest
import torch

from catapult import schedules
from catapult.optim import GIAdam
from catapult.schedules import attach, warmup


def _groups():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return a, b, [{"params": [a], "lr_mult": 1.0}, {"params": [b], "lr_mult": 0.25}]


@pytest.mark.parametrize("make", [torch.optim.SGD, torch.optim.Adam, GIAdam])
def test_groups_sharing_the_constructors_tensor_lr_each_get_their_own_multiplier(make):
    f = warmup(1.0, 4)
    a, b, groups = _groups()
    lr = torch.tensor(0.0)
    opt = make(groups, lr=lr)
    assert opt.param_groups[0]["lr"] is opt.param_groups[1]["lr"]      # torch's own sharing
    scheduler = attach(opt, f)
    assert opt.param_groups[0]["lr"] is lr        # the first holder keeps the tensor (a compiled step reads it)
    c = torch.nn.Parameter(torch.zeros(1))
    for t in range(6):
        if t == 3:   # a later group gets the defaults' lr, the first group's tensor again
            opt.add_param_group({"params": [c], "lr_mult": 0.5})
            assert opt.param_groups[2]["lr"] is lr
        got = [float(g["lr"]) for g in opt.param_groups]
        want = [f(t) * m for m in (1.0, 0.25, 0.5)][:len(got)]
        if t == 3:   # the new group holds the first's lr until the scheduler's next step
            want[2] = f(t)
        assert got == pytest.approx(want, rel=1e-6), t
        before = [p.detach().clone() for p in (a, b, c)]
        for p in (a, b, c):
            p.grad = torch.ones_like(p)
        opt.step()
        if make is torch.optim.SGD:   # the step itself moved each group by its own lr
            moved = [float((q - p).abs().max()) for p, q in zip((a, b, c), before)]
            assert moved[:len(got)] == pytest.approx(got, rel=1e-6), t
        scheduler.step()


def test_persistent_warmup_gives_groups_sharing_a_tensor_lr_their_own_multiplier():
    model = torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    opt = torch.optim.SGD([{"params": [model.weight], "lr_mult": 1.0},
                           {"params": [model.bias], "lr_mult": 0.25}], lr=torch.tensor(0.0))
    pcw = schedules.PersistentCatapultWarmup(opt, model, torch.nn.MSELoss(), lr_target=1.0, lr_start=1 / 64)
    base = pcw.step(batch)
    assert 0 < base <= 1.0
    assert [float(g["lr"]) for g in opt.param_groups] == pytest.approx([base, 0.25 * base], rel=1e-6)
    pcw.load_state_dict({**pcw.state_dict(), "lr": 0.5})
    assert [float(g["lr"]) for g in opt.param_groups] == pytest.approx([0.5, 0.125], rel=1e-6)
