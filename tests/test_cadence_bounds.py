"""Cadence keys are step counts, bounded as ``train.steps`` is (``MAX_STEPS`` = 10**9): an
``eval.sharpness_every: 1e26`` (= never) was taken, in the config and in the Python API."""
from __future__ import annotations

import pytest
import torch

from catapult import config as cfg
from catapult.arguments import MAX_STEPS

CADENCE = [("eval", "sharpness_every", 0), ("eval", "test_every", 0), ("model.sparsity", "update_every", 1)]


def _nested(section, key, value):
    out = {key: value}
    for part in reversed(section.split(".")):
        out = {part: out}
    return out


@pytest.mark.parametrize("section, key, low", CADENCE)
def test_cadence_keys_refuse_more_than_max_steps_naming_the_key(section, key, low):
    name = f"{section}.{key}"
    for value in (MAX_STEPS + 1, "1e26", 1e26, 10 ** 30):
        with pytest.raises(cfg.ConfigError) as err:
            cfg.validate(_nested(section, key, value))
        assert err.value.keys == [name]
        assert f"expected an integer >= {low} and <= 1000000000" in str(err.value)
    # 10**9 itself is in range: whatever else a check says of it, it is not the range
    try:
        cfg.validate(_nested(section, key, MAX_STEPS))
    except cfg.ConfigError as err:
        assert "<= 1000000000" not in str(err)


def test_the_command_line_refuses_a_huge_cadence_before_any_work(tmp_path, capsys):
    from catapult import cli

    config = tmp_path / "huge.yaml"
    config.write_text("data: {name: digits, n_train: 8, n_test: 8}\nmodel: {width: 4, depth: 2}\n"
                      "train: {steps: 2}\neval: {sharpness_every: 1e26}\n")
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "eval.sharpness_every" in err and "1000000000" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("label, kwargs", [
    ("update_every", dict(update_every=10 ** 26, end_step=10)),
    ("start_step", dict(start_step=MAX_STEPS + 1, end_step=10)),
    ("end_step", dict(end_step=MAX_STEPS + 1)),
])
def test_mask_updater_step_arguments_are_bounded(label, kwargs):
    from catapult.sparsity import MaskUpdater, sparsify_

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    sparsify_(model[0], 0.5)
    with pytest.raises(ValueError, match=rf"^MaskUpdater {label} must be (None or )?an integer in "
                                         rf"\[{0 if label != 'update_every' else 1}, 1000000000\]"):
        MaskUpdater(model, "gmp", final_density=0.5, **kwargs)
    MaskUpdater(model, "gmp", final_density=0.5, update_every=MAX_STEPS, end_step=MAX_STEPS)   # the bound is in


def test_coord_check_steps_are_bounded():
    from catapult.coord_check import coord_check

    batch = (torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"^coord_check steps must be an integer in \[1, 1000000000\]; got 10000000000$"):
        coord_check(lambda width: torch.nn.Linear(3, 2), [1.0], batch=batch, steps=10 ** 10)
