"""``CriticalLR.loss0`` is the loss ``L(theta)`` on the batch (as documented, and what
:class:`~catapult.schedules.PersistentCatapultWarmup` compares the training loss with), also where
the search reads the coupled-L2 objective ``J = L + wd/2 ||theta||^2`` (SGD, Adam, RAdam
``weight_decay``). Stop 61 returned ``J(theta)`` there: the warmup compared ``L(theta_t)`` with
``L(theta*) + wd/2 ||theta*||^2`` and searched again on a loss that had risen (Alg. 3 re-searches only
on a strictly lower one), and ``catapult critical-lr``'s ``loss0`` column held ``J``.

Truth: closed forms on ``L(w) = ((2 w1 - 1)^2 + (w2 - 1)^2) / 2`` at ``w = (0.5, 0.5)``:
``L = 1/8``, ``||w||^2 = 1/2``."""
from __future__ import annotations

import pytest
import torch

from catapult import critical_lr, schedules

WD = 2.0


def _problem(make_opt):
    model = torch.nn.Linear(2, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, 0.5]]))
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
             torch.tensor([[1.0], [1.0]], dtype=torch.float64))
    return model, batch, make_opt(model.parameters())


def _loss(out, y):
    return ((out - y) ** 2).sum() / 2          # L = ((2 w1 - 1)^2 + (w2 - 1)^2) / 2


OPTIMIZERS = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=WD),
              "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=WD),
              "adam": lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=WD),
              "radam": lambda ps: torch.optim.RAdam(ps, lr=0.1, weight_decay=WD),
              "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=WD)}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_loss0_is_the_loss_not_the_objective(name):
    model, batch, opt = _problem(OPTIMIZERS[name])
    res = critical_lr(model, _loss, batch, opt, lr_start=1e-3)
    assert res.loss0 == 0.125           # (0^2 + (-0.5)^2) / 2, exact in float64; J would be 0.125 + 0.5


def test_persistent_warmup_with_weight_decay_searches_again_only_below_the_loss_at_theta_star():
    model, batch, opt = _problem(lambda ps: torch.optim.SGD(ps, lr=0.0, weight_decay=WD))
    pcw = schedules.PersistentCatapultWarmup(opt, model, _loss, lr_target=10.0, lr_start=1e-3)
    lr = pcw.step(batch)
    assert pcw.searches == 1 and pcw.loss_ref == 0.125
    assert pcw.step(batch, loss=0.3) == lr     # the loss rose (0.125 -> 0.3): Alg. 3 keeps the lr
    assert pcw.searches == 1
    pcw.step(batch, loss=0.1)                  # lower: search again
    assert pcw.searches == 2
