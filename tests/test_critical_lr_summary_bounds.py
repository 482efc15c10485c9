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


def test_an_uncapped_search_that_never_saw_a_rise_prints_a_lower_bound():
    # L(w) = exp(-w) falls along every gradient step w + lr exp(-w): without lr_max the search doubles
    # lr_start 64 times and returns lr = lower = lr_start 2^64, upper = inf (not a critical lr); the CLI's
    # line printed 'lr_c = 1.845e+11  bracket [1.845e+11, inf]' as a measurement
    import math
    import warnings

    from catapult import critical_lr
    from catapult.engine.critical_lr_study import format_estimate

    model = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    batch = (torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    loss_fn = lambda out, _y: torch.exp(-out).mean()   # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = critical_lr(model, loss_fn, batch, torch.optim.SGD(model.parameters(), lr=1.0), lr_start=1e-8)
    assert (res.lr, res.lower, res.upper) == (1e-8 * 2.0 ** 64, 1e-8 * 2.0 ** 64, math.inf)
    assert math.exp(-(0.5 + res.lr * math.exp(-0.5))) <= math.exp(-0.5)   # its own step still lowers L
    line = format_estimate(dict(name="exp", optimizer="sgd", lr_critical=res.lr, lower=res.lower, upper=res.upper,
                                forward_passes=res.forward_passes, delta=0.1, rtol=None, lr_start=1e-8, lr_max=None,
                                lambda_0=None, gd_estimate=None, lr_critical_times_lambda_0=None, lr_target=1.0,
                                preconditioned_sharpness=None)).splitlines()[0]
    assert f"lr_c >= {res.lr:.4g}  bracket [{res.lower:.4g}, inf]" in line
