"""Stop 54's config checks at their edges (mutation pass 11): ``schedule.lr_init`` against an
absolute ``optimizer.lr`` only (a ``c/lambda0`` one is checked once lambda_0 is known), once per
key; ``checks`` a flag of 0/1 only; what ``train-ddp`` needs, each key by name; ``engine.run``'s
``overwrite`` flag refused before any work. Truth: the rules the messages and docstrings state."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult import engine
from catapult.engine.build import check_lr_init
from catapult.engine.ddp_config import check_ddp_config


def test_an_lr_init_is_compared_with_an_absolute_lr_only_and_equal_is_a_constant_lr():
    assert cfg.validate({"optimizer": {"lr": "0.5/lambda0"}, "schedule": {"warmup_steps": 4, "lr_init": 1.0}})
    assert cfg.validate({"optimizer": {"lr": 0.1}, "schedule": {"warmup_steps": 4, "lr_init": 0.1}})
    check_lr_init({"lr_init": 0.25}, 0.25)  # lr_init == lr_trgt: a constant lr, not a falling one
    with pytest.raises(cfg.ConfigError, match="schedule.lr_init: 0.3 exceeds the target lr 0.25"):
        check_lr_init({"lr_init": 0.3}, 0.25)


def test_an_lr_init_under_the_catapult_warmup_is_one_problem_not_two():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate({"optimizer": {"lr": 0.1}, "schedule": {"warmup": "catapult", "lr_init": 0.2}})
    assert err.value.keys == ["schedule.lr_init"] and "only used by schedule.warmup: linear" in str(err.value)
    assert "exceeds" not in str(err.value)


@pytest.mark.parametrize("checks", [2, -1, 0.5])
def test_checks_other_than_0_or_1_are_refused(checks):
    with pytest.raises(TypeError, match="validate: checks must be True or False"):
        cfg.validate({}, checks=checks)


GPT = {"model": {"name": "gpt"}, "loss": "cross_entropy", "data": {"name": "text", "root": "shards"},
       "train": {"batch_size": 8}}


@pytest.mark.parametrize("change, key", [({"loss": "mse"}, "model.name"), ({"model": {"name": "mlp"}}, "model.name"),
                                         ({"train": {"batch_size": None}}, "train.batch_size"),
                                         ({"data": {"name": "shakespeare"}}, "data.root")])
def test_train_ddp_names_each_key_in_its_way(change, key):
    check_ddp_config(cfg.validate(GPT))
    with pytest.raises(cfg.ConfigError) as err:
        check_ddp_config(cfg.validate({**GPT, **change}))
    assert err.value.keys == [key]


def test_run_refuses_an_overwrite_that_is_not_a_flag_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.loop, "build_run", lambda config, **kwargs: pytest.fail("built the run"))
    with pytest.raises(TypeError, match="overwrite"):
        engine.run({"data": {"name": "digits", "n_train": 8}}, out_dir=tmp_path / "run", overwrite="no", progress="none")
    assert not (tmp_path / "run").exists()
