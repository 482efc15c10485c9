"""Cross-key checks at their boundaries, by the rule each message states."""
from __future__ import annotations

import pytest

from catapult import config as cfg


def _keys(mapping):
    try:
        cfg.validate(mapping)
    except cfg.ConfigError as err:
        return err.keys
    return []


def test_a_decay_needs_at_least_one_step_after_warmup():
    assert _keys({"schedule": {"decay": "cosine", "warmup_steps": 5}, "train": {"steps": 5}}) == ["schedule.decay"]
    assert _keys({"schedule": {"decay": "cosine", "warmup_steps": 5}, "train": {"steps": 6}}) == []


def test_the_search_may_start_at_the_target_lr_not_above_it():
    base = {"schedule": {"warmup": "catapult"}, "optimizer": {"lr": 0.5}}
    assert _keys({**base, "schedule": {"warmup": "catapult", "lr_start": 0.5}}) == []
    assert _keys({**base, "schedule": {"warmup": "catapult", "lr_start": 0.5000001}}) == ["schedule.lr_start"]


@pytest.mark.parametrize("depth, ok", [(4, False), (10, True), (12, False), (16, True)])
def test_wrn_depth_is_6n_plus_4_with_n_at_least_1(depth, ok):
    keys = _keys({"model": {"name": "wrn", "depth": depth}, "train": {"batch_size": 32}})
    assert (keys == []) is ok and (ok or keys == ["model.depth"])


@pytest.mark.parametrize("width, heads, ok", [(12, 8, False), (16, 8, True), (24, 16, False)])
def test_gpt_heads_must_divide_the_width(width, heads, ok):
    keys = _keys({"data": {"name": "shakespeare"}, "model": {"name": "gpt", "width": width, "n_heads": heads}})
    assert (keys == []) is ok and (ok or keys == ["model.n_heads"])


def test_only_the_persistent_warmup_is_refused_a_decay():
    assert _keys({"schedule": {"warmup": "persistent", "decay": "cosine"}, "train": {"steps": 50}}) == ["schedule.decay"]
    assert _keys({"schedule": {"warmup": "catapult", "decay": "cosine"}, "train": {"steps": 50}}) == []


def test_checks_is_a_flag_not_a_list_of_checks(tmp_path):
    """validate(config, checks=[]) skipped every cross-key check (a decay ending before its warmup
    passed), and checks=[my_check] ran the built-in ones only, silently; load_config likewise."""
    short = {"schedule": {"decay": "cosine", "warmup_steps": 5}, "train": {"steps": 5}}
    assert _keys(short) == ["schedule.decay"]
    assert cfg.validate(short, checks=False)["train"]["steps"] == 5
    for checks in ([], [lambda config: []], "yes", None):
        with pytest.raises(TypeError, match="validate: checks must be True or False"):
            cfg.validate(short, checks=checks)
    path = tmp_path / "short.yaml"
    path.write_text("train:\n  steps: 5\n")
    assert cfg.load_config(path, checks=0)["train"]["steps"] == 5
    # NumPy's bools and integers 0/1 are flags, as catapult.arguments.check_flag takes them
    # (NumPy 2 names its bool type "bool": np.True_ was refused)
    np = pytest.importorskip("numpy")
    assert cfg.validate(short, checks=np.False_)["train"]["steps"] == 5
    assert cfg.load_config(path, checks=np.int64(0))["train"]["steps"] == 5
    with pytest.raises(cfg.ConfigError):
        cfg.validate(short, checks=np.True_)
    with pytest.raises(TypeError, match="load_config: checks must be True or False"):
        cfg.load_config(path, checks=[])


@pytest.mark.parametrize("section, key, low", [("train", "steps", 0), ("schedule", "warmup_steps", 1)])
def test_step_counts_have_an_upper_bound(tmp_path, capsys, section, key, low):
    # `train.steps: 1e26` was accepted and trained forever
    from catapult import arguments, cli
    from catapult.config import options

    assert options.MAX_STEPS == arguments.MAX_STEPS == 10 ** 9   # config keeps its own copy (it imports no other package)
    top = {"train": {"steps": 10 ** 9}} if key == "warmup_steps" else {}  # a warmup of 10**9 needs as many steps
    assert _keys({**top, section: {key: 10 ** 9}}) == []
    for value in (10 ** 9 + 1, "1e26", 1e26):
        assert _keys({**top, section: {key: value}}) == [f"{section}.{key}"]
    config = tmp_path / "huge.yaml"
    config.write_text(f"data: {{name: digits, n_train: 8, n_test: 8}}\nmodel: {{width: 4, depth: 2}}\n{section}: {{{key}: 1e26}}\n")
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{section}.{key}" in err and "1000000000" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("checks", [2, -1])
def test_an_integer_other_than_0_or_1_is_no_checks_flag(checks):
    # Mutation pass 22 (CV1): checks=2 was taken as True
    from catapult.config import validate

    with pytest.raises(TypeError, match=f"validate: checks must be True or False, got {checks}"):
        validate({}, checks=checks)
    assert validate({}, checks=1) == validate({}, checks=True)
