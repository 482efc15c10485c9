"""``schedule.lr_final`` against the target lr (mutation pass 10): the decay falls from the target lr to
``lr_final``, so ``lr_final <= lr_trgt`` (equal: a flat decay); an absolute ``optimizer.lr`` is checked
by the config, a ``c/lambda0`` one where ``lr_trgt = c / lambda_0`` is known, before the catapult
search. Truth: the schedule's closed form (linear decay from lr_trgt at step warmup_steps - 1 to
lr_final at the last step)."""
from __future__ import annotations

import sys

import pytest
import torch

from catapult.config import ConfigError, validate
from catapult.engine.build import build_schedule, build_warmup


def _config(lr, decay: str, lr_final, warmup: str = "linear") -> dict:
    return validate({"optimizer": {"lr": lr}, "train": {"steps": 10},
                     "schedule": {"warmup": warmup, "warmup_steps": 2, "decay": decay, "lr_final": lr_final}})


def test_an_lr_final_above_c_is_fine_where_c_over_lambda0_exceeds_it():
    # "2/lambda0" is 4 at lambda_0 = 0.5: a decay to 3 falls; the config cannot tell (lambda_0 unknown)
    config = _config("2/lambda0", "linear", 3.0)
    schedule = build_schedule(config, 4.0)
    assert [schedule(t) for t in (1, 9)] == [4.0, 3.0]
    assert schedule(5) == pytest.approx(4.0 - (4.0 - 3.0) * (5 - 1) / (9 - 1))


def test_an_lr_final_equal_to_a_resolved_lr_is_a_flat_decay():
    config = _config("2/lambda0", "cosine", 0.5)
    schedule = build_schedule(config, 0.5)
    assert [schedule(t) for t in range(1, 10)] == [0.5] * 9


def test_a_constant_schedule_with_an_lr_final_is_told_once_what_lr_final_is_for():
    with pytest.raises(ConfigError) as info:
        _config(1.0, "constant", 2.0)
    assert info.value.keys == ["schedule.lr_final"] and "only used with schedule.decay" in str(info.value)


def test_the_catapult_warmup_refuses_an_lr_final_above_the_resolved_lr_before_its_search(monkeypatch):
    # the search is forward passes over the batch: the refusal comes first, a ConfigError (the CLI's exit 2)
    def search(*args, **kwargs):
        raise AssertionError("the critical-lr search ran before the lr_final check")

    monkeypatch.setattr(sys.modules["catapult.critical_lr"], "critical_lr", search)
    config = _config("2/lambda0", "linear", 0.5, warmup="catapult")
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigError) as info:
        build_warmup(config, 0.25, model, torch.nn.MSELoss(), (torch.ones(4, 2), torch.ones(4, 1)),
                     torch.optim.SGD(model.parameters(), lr=0.25))
    assert info.value.keys == ["schedule.lr_final"]
