"""A run's printed summary says when its catapult search measured no critical lr but a bound: a search
capped at lr_trgt whose loss still fell there gives ``lr_c = lr_trgt`` (the critical lr lies above it), and
one whose loss rose at its first trial ``lr_c = lr_start`` (the critical lr lies at or below it). Before,
both printed as a bare ``lr_c 0.01``, read as the measured critical lr."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml

from catapult import config as C
from catapult.cli import main
from catapult.engine import build_run, train
from catapult.engine.records import format_summary


def _setup(warmup: str, lr: float, **schedule):
    return build_run(C.validate({"name": "bounds", "data": {"name": "digits", "n_train": 64, "n_test": 16},
                                 "model": {"width": 8, "depth": 2}, "optimizer": {"name": "sgd", "lr": lr},
                                 "schedule": {"warmup": warmup, "warmup_steps": 4, **schedule},
                                 "train": {"steps": 2}, "eval": {"sharpness_every": 0, "test_every": 0}}))


def _loss_after_one_step(setup, lr: float) -> tuple[float, float]:
    """(L(theta_0), L after one plain SGD step at ``lr``) on batch 0, by torch itself."""
    model = copy.deepcopy(setup.model)
    x, y = setup.batches.batch(0)
    loss0 = setup.loss_fn(model(x), y)
    grads = torch.autograd.grad(loss0, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p.sub_(lr * g)
        return float(loss0), float(setup.loss_fn(model(x), y))


@pytest.mark.parametrize("warmup", ["catapult", "persistent"])
def test_a_search_that_saw_no_rise_up_to_lr_trgt_prints_a_lower_bound(warmup):
    setup = _setup(warmup, 0.01)
    loss0, loss1 = _loss_after_one_step(setup, 0.01)
    assert loss1 < loss0                      # lr_trgt's own step lowers the loss: lr_c lies above it
    summary = train(setup, progress="none").summary
    assert summary["lr_critical"] == summary["lr_critical_lower"] == 0.01
    line = next(s for s in format_summary(summary).splitlines() if "warmup:" in s)
    assert "lr_c >= 0.01 " in line


def test_a_search_whose_first_trial_rose_prints_an_upper_bound():
    setup = _setup("catapult", 1000.0, lr_start=300.0)
    loss0, loss1 = _loss_after_one_step(setup, 300.0)
    assert loss1 > loss0                      # the first trial's step raises the loss: lr_c lies at or below it
    summary = train(setup, progress="none").summary
    assert (summary["lr_critical"], summary["lr_critical_lower"]) == (300.0, 0.0)
    line = next(s for s in format_summary(summary).splitlines() if "warmup:" in s)
    assert "lr_c <= 300 " in line


def _config_file(tmp_path, lr: float, **schedule) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "bounds", "data": {"name": "digits", "n_train": 64, "n_test": 16},
                                    "model": {"width": 8, "depth": 2}, "optimizer": {"name": "sgd", "lr": lr},
                                    "schedule": {"warmup": "catapult", "warmup_steps": 4, **schedule}}))
    return str(path)


def test_catapult_critical_lr_prints_the_bounds_too(tmp_path, capsys):
    loss0, loss1 = _loss_after_one_step(_setup("catapult", 0.01), 0.01)
    assert loss1 < loss0                      # no rise up to the cap: lr_c lies above it
    assert main(["critical-lr", _config_file(tmp_path, 0.01), "--cap"]) == 0
    assert "lr_c >= 0.01  bracket [0.01, 0.01]" in capsys.readouterr().out
    setup = _setup("catapult", 1000.0, lr_start=300.0)
    loss0, loss1 = _loss_after_one_step(setup, 300.0)
    assert loss1 > loss0                      # a rise at the first trial: lr_c lies at or below it
    assert main(["critical-lr", _config_file(tmp_path, 1000.0, lr_start=300.0)]) == 0
    assert "lr_c <= 300  bracket [0, 300]" in capsys.readouterr().out
    assert main(["critical-lr", _config_file(tmp_path, 1000.0)]) == 0     # a measured bracket: '='
    assert "lr_c = " in capsys.readouterr().out
