"""Messages that named the wrong thing (note 59's leftovers): a run name made of a config file's
name, and a store that holds no sweep yet, said the same way by every command that reads it."""
from __future__ import annotations

import pytest

from catapult import cli
from catapult.config import ConfigError, load_config
from catapult.sweep.store import Store, StoreError


@pytest.mark.parametrize("file, stem", [("...yaml", ".."), ("..yaml", "."), ("-a.yaml", "-a"), ("_x.yaml", "_x")])
def test_a_name_taken_from_the_file_says_so(tmp_path, file, stem):
    path = tmp_path / file
    path.write_text("seed: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # was: "name: expected a run name ..., got '..'": a key the user never set
    assert info.value.keys == ["name"]
    message = str(info.value)
    assert f"not set, and the config file's name {file!r} gives no run name (its stem {stem!r}" in message
    assert "set name: in the file or name=... on the command line" in message
    assert load_config(path, ["name=ok"])["name"] == "ok"   # the remedy it names
    path.write_text("name: mine\nseed: 0\n")
    assert load_config(path)["name"] == "mine"


def test_the_name_problem_comes_with_the_files_other_problems(tmp_path):
    path = tmp_path / "..yaml"
    path.write_text("seed: 0\nsteps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.keys == ["name", "steps"]


def test_the_cli_exits_2_naming_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "...yaml").write_text("seed: 0\n")
    assert cli.main(["train", "...yaml"]) == 2
    err = capsys.readouterr().err
    assert "config file's name '...yaml'" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["plot"], ["transfer"], ["export", "--out", "OUT"], ["report"]])
def test_a_store_with_no_sweep_is_said_so_by_every_reader(tmp_path, capsys, command):
    store = tmp_path / "empty.db"
    with Store(store):  # created, no sweep started: an empty meta
        pass
    args = [command[0], str(store)] + [str(tmp_path / "cells.csv") if a == "OUT" else a for a in command[1:]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    # plot said "the sweep has no swept keys to plot", transfer "transfer_curves: axes is empty"
    assert f"{store} holds no sweep yet" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]   # nothing written


def test_axes_of_a_store_with_no_sweep_is_refused_and_of_a_sweep_without_swept_keys_is_empty(tmp_path):
    store = tmp_path / "s.db"
    with Store(store) as s:
        with pytest.raises(StoreError, match="holds no sweep yet"):   # was [] (no swept keys)
            s.axes()
        # a store whose spec is there keeps axes [] (a sweep of one cell): told apart
        s.conn.execute("INSERT INTO meta(key, value) VALUES ('spec_json', '{\"base\": {}, \"sweep\": {}}')")
        s.conn.commit()
        assert s.axes() == []
