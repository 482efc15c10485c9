"""Every text / GPT study config (SμPar studies, the warmup paper's Fig. 4) validates: every cell and
every coord-check model, before any work."""
from __future__ import annotations

from pathlib import Path

import pytest

from catapult.config import read_mapping

ROOT = Path(__file__).resolve().parents[1]
SUPAR = sorted((ROOT / "configs" / "supar").glob("*.yaml"))
CONFIGS = SUPAR + sorted((ROOT / "configs" / "sweeps").glob("fig4_gpt_*.yaml"))


def test_there_are_small_and_paper_scale_configs():
    names = {p.stem for p in SUPAR}
    for study in ("coord_check", "lr_transfer", "init_std", "width_transfer"):
        assert {f"{study}_small", f"{study}_paper"} <= names, study
    # the fig4 GPT sweeps are parametrized from a glob too: one that found none ran no test
    assert {"fig4_gpt_small", "fig4_gpt_paper"} <= {p.stem for p in CONFIGS[len(SUPAR):]}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path, tmp_path):
    raw = read_mapping(path)
    overrides = []
    if raw["data"]["name"] == "text":  # paper scale: the user's files
        (tmp_path / "wiki.train.raw").write_text("x")
        overrides.append(f"data.root={tmp_path}")
    if "sweep" in raw:
        from catapult.sweep.spec import expand, load_sweep

        base, spec = load_sweep(path, overrides)
        cells = expand(base, spec)
        assert len(cells) >= 12
        if "lr_transfer" in path.stem:
            densities = {c.swept["model.density"] for c in cells}
            assert densities == {1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625}  # sparsity 0 .. .984375
            assert {c.swept["model.parametrization"] for c in cells} == {"sp", "mup", "supar", "supar_init",
                                                                       "supar_lr"}
    elif "coord_check" not in path.stem:  # one run (e.g. fig3_610m_paper for train-ddp)
        from catapult.config import load_config

        assert load_config(path, overrides)["model"]["name"] == "gpt"
    else:
        from catapult.engine.coord_check_study import load_coord_check

        config, spec = load_coord_check(path, overrides)
        assert spec["densities"] and set(spec["parametrizations"]) == {"sp", "mup", "supar"}


@pytest.mark.parametrize("loss, noted", [(None, True), ("mse", True), ("cross_entropy", False)])
def test_a_gpt_under_the_default_mse_loss_is_noted(tmp_path, capsys, loss, noted):
    # loss defaults to mse (the warmup paper's image runs): a GPT config without `loss:` trained its
    # logits on 0.5 * mean squared error against one-hot tokens (first loss 0.038, not ~ln(vocab)), silently
    import argparse

    import yaml

    from catapult.cli.common import config_from_args

    config = {"name": "lm", "data": {"name": "shakespeare", "context": 8, "n_train": 16, "n_test": 4},
              "model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2}}
    if loss is not None:
        config["loss"] = loss
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(config))
    args = argparse.Namespace(config=str(tmp_path / "lm.yaml"), overrides=[], command="train")
    assert config_from_args(args)["loss"] == (loss or "mse")
    err = capsys.readouterr().err
    assert ("note: loss is mse (the default) on the GPT's logits; language models train with "
            "loss: cross_entropy" in err) == noted, err


@pytest.mark.parametrize("warmup, steps, noted", [("persistent", 64, True), ("persistent", 1, False),
                                                   ("linear", 64, False), ("catapult", 64, False)])
def test_a_persistent_warmup_with_warmup_steps_is_noted(tmp_path, capsys, warmup, steps, noted):
    # PersistentCatapultWarmup has no T_wrm: the fig5 sweep's persistent cells at T_wrm 64 and 256
    # are the same run, and a user setting warmup_steps was told nothing
    import argparse

    import yaml

    from catapult.cli.common import config_from_args

    config = {"name": "p", "data": {"name": "digits", "n_train": 32, "n_test": 16},
              "schedule": {"warmup": warmup, "warmup_steps": steps}, "train": {"steps": 100}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    args = argparse.Namespace(config=str(tmp_path / "p.yaml"), overrides=[], command="train")
    config_from_args(args)
    err = capsys.readouterr().err
    assert (f"note: schedule.warmup_steps ({steps}) is not used by schedule.warmup: persistent" in err) == noted, err


@pytest.mark.parametrize("command, schedule, noted", [
    ("train", {"delta": 0.05}, "schedule.delta (0.05) is"),
    ("train", {"lr_start": 1e-3, "rtol": 0.1}, "schedule.lr_start (0.001), schedule.rtol (0.1) are"),
    ("train-ddp", {"rtol": 0.1}, "schedule.rtol (0.1) is"),
    ("train", {}, None),                                           # the defaults (null): nothing to say
    ("train", {"warmup": "catapult", "delta": 0.05}, None),        # read by the catapult warmup's search
    ("train", {"warmup": "persistent", "lr_start": 1e-3}, None),
    ("critical-lr", {"delta": 0.05}, None),                        # catapult critical-lr reads them
])
def test_search_keys_beside_a_linear_warmup_are_noted(tmp_path, capsys, command, schedule, noted):
    # warmup: linear runs no critical-lr search: catapult train read schedule.delta / lr_start / rtol
    # without a word (catapult critical-lr reads them), so a user tuning delta saw no change
    import argparse

    import yaml

    from catapult.cli.common import config_from_args

    config = {"name": "s", "data": {"name": "digits", "n_train": 32, "n_test": 16},
              "schedule": {"warmup": "linear", **schedule}, "train": {"steps": 100}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    args = argparse.Namespace(config=str(tmp_path / "s.yaml"), overrides=[], command=command)
    config_from_args(args)
    err = capsys.readouterr().err
    if noted is None:
        assert "critical-lr search" not in err, err
    else:
        assert f"catapult {command}: note: {noted} not used by schedule.warmup: linear, which runs no critical-lr " \
               f"search" in err, err
        assert err.count("note:") == 1, err


def test_the_search_keys_note_of_one_key_a_key_set_to_0_and_no_command():
    """Mutation pass 20 (SN3, SN4, SN6): search_keys_note with no command is catapult train's (SN3 took it as
    critical-lr's: no note); a key set to 0 is set, not the default null (SN4 passed over 0); one key 'is not
    used' and the search 'reads it', two 'are' and 'them' (SN6 said 'them' of one)."""
    from catapult.cli.common import search_keys_note

    base = {"warmup": "linear", "delta": None, "lr_start": None, "rtol": None}
    assert search_keys_note(None, dict(base, delta=0.05)) == (
        "catapult train: note: schedule.delta (0.05) is not used by schedule.warmup: linear, which runs no "
        "critical-lr search (warmup: catapult or persistent reads it, as does catapult critical-lr)")
    assert search_keys_note("train-ddp", dict(base, delta=0.0, rtol=0.1)) == (
        "catapult train-ddp: note: schedule.delta (0), schedule.rtol (0.1) are not used by schedule.warmup: "
        "linear, which runs no critical-lr search (warmup: catapult or persistent reads them, as does catapult "
        "critical-lr)")
