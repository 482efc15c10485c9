"""Small API contract leftovers (helper h3, stop 55): each test fails on the code before its fix."""
import pytest

from catapult import schedules
from catapult.config import ConfigError, validate


def test_a_warmup_from_an_lr_init_above_lr_target_is_refused():
    # before: warmup(1.0, 4, lr_init=2.0) gave 1.75, 1.5, 1.25, 1.0: a "warmup" that decayed
    with pytest.raises(ValueError, match=r"lr_init \(2\) must be <= lr_target \(1\)"):
        schedules.warmup(1.0, 4, lr_init=2.0)
    with pytest.raises(ValueError, match="lr_init"):
        schedules.WarmupSchedule(lr_target=0.5, warmup_steps=1, lr_init=0.75)
    flat = schedules.warmup(1.0, 4, lr_init=1.0)  # lr_init == lr_target: a constant lr
    assert [flat(t) for t in range(5)] == [1.0] * 5
    rising = schedules.warmup(1.0, 4, lr_init=0.5)   # 0.5 + 0.5 (t + 1) / 4
    assert [rising(t) for t in range(5)] == [0.625, 0.75, 0.875, 1.0, 1.0]


def test_the_config_refuses_an_lr_init_above_an_absolute_lr_and_build_one_above_a_resolved_lr():
    with pytest.raises(ConfigError) as info:
        validate({"optimizer": {"lr": 0.1}, "schedule": {"warmup_steps": 4, "lr_init": 0.2}})
    assert info.value.keys == ["schedule.lr_init"] and "optimizer.lr (0.1)" in str(info.value)
    validate({"optimizer": {"lr": 0.1}, "schedule": {"warmup_steps": 4, "lr_init": 0.1}})
    from catapult.engine.build import build_schedule
    config = validate({"optimizer": {"lr": "2/lambda0"}, "schedule": {"warmup_steps": 4, "lr_init": 0.5}})
    with pytest.raises(ConfigError) as info:   # lr_trgt = 2 / lambda_0 = 0.25 < 0.5
        build_schedule(config, 0.25)
    assert info.value.keys == ["schedule.lr_init"]
    assert build_schedule(config, 1.0)(0) == 0.625


def test_the_cli_refuses_an_lr_init_above_the_lr_before_any_work(tmp_path, capsys):
    from catapult import cli
    from tiny_run import tiny_config

    path = tmp_path / "c.yaml"
    path.write_text(tiny_config("h3"))
    rc = cli.main(["train", str(path), "optimizer.lr=0.1", "schedule.warmup_steps=4", "schedule.lr_init=0.3",
                   "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "schedule.lr_init" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
