"""An optimizer with ``maximize=True`` ascends ``loss_fn``: ``critical_lr``, the pre-conditioned
curvature and ``PersistentCatapultWarmup`` measure the descent of ``loss_fn`` and refuse it
(before: a critical lr of ``lr_start``, the loss rising at once, and the curvature of ``+H``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import catapult
from catapult.optim import GIAdam


def problem():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    return model, batch


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.1, maximize=True),
    lambda p: torch.optim.Adam(p, maximize=True),
    lambda p: GIAdam(p, maximize=True),
])
def test_critical_lr_and_warmup_refuse_maximize(make):
    model, batch = problem()
    opt = make(model.parameters())
    with pytest.raises(ValueError, match="critical_lr: param group 0 has maximize=True"):
        catapult.critical_lr(model, F.mse_loss, batch, opt)   # was lr_start, 1e-4
    with pytest.raises(ValueError, match="PersistentCatapultWarmup: param group 0 has maximize=True"):
        catapult.schedules.PersistentCatapultWarmup(opt, model, F.mse_loss, lr_target=1.0)


def test_preconditioned_curvature_refuses_maximize_naming_the_group():
    model, batch = problem()
    other = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [other]}, {"params": model.parameters(), "maximize": True}])
    with pytest.raises(ValueError, match="param group 1 has maximize=True"):
        catapult.preconditioned_sharpness(model, F.mse_loss, batch, opt)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, maximize=True)
    with pytest.raises(ValueError, match="param group 0 has maximize=True"):
        catapult.top_eigenpairs(model, F.mse_loss, batch, k=1, optimizer=sgd, scale_by_group_lr=True)


def test_the_advised_form_is_the_same_step_and_measures_it():
    """maximize=True on a reward r = -mse is maximize=False on mse: the same step; critical_lr then
    finds the descent's catapult, L(lr) = (4 lr - 1)^2 / 2 > L0 = 1/2 exactly for lr > 1/2 (the
    docstring's example: 0.5078125 from lr_start 1/64)."""
    model, batch = problem()
    reward = lambda out, y: -F.mse_loss(out, y)
    a, b = problem()[0], problem()[0]
    for m, loss, maximize in ((a, reward, True), (b, F.mse_loss, False)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, maximize=maximize)
        loss(m(batch[0]), batch[1]).backward()
        opt.step()
    assert torch.equal(a.weight, b.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, maximize=False)
    assert catapult.critical_lr(model, F.mse_loss, batch, opt, lr_start=1 / 64).lr == 0.5078125


def test_an_empty_group_with_maximize_is_not_refused_but_the_first_one_with_parameters_is():
    # Mutation pass 22 (RG3): a group without parameters steps nothing, whatever it says
    from catapult.optim.registry import refuse_maximize

    w = torch.nn.Parameter(torch.zeros(2))
    refuse_maximize(torch.optim.SGD([{"params": [], "maximize": True}, {"params": [w]}], lr=0.1), "critical_lr")
    v = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [], "maximize": True}, {"params": [w]}, {"params": [v], "maximize": True}], lr=0.1)
    with pytest.raises(ValueError, match="critical_lr: param group 2 has maximize=True"):
        refuse_maximize(opt, "critical_lr")
