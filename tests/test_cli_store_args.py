"""Store arguments and sweep flags that were taken for something else: ``.``, ``/`` or ``''`` as
a store (a ValueError traceback from the default figure names made of it), flags of another
executor given an empty or zero value (tested for truth, so taken silently), and ``--store ''``
(quietly the default store). Each is refused with exit 2 and one line naming it, before any
file is written."""
from __future__ import annotations

import pytest
import yaml

from catapult.cli import main

CONFIG = dict(name="tiny", seed=0, data=dict(name="digits", n_train=64, n_test=32),
              model=dict(name="mlp", width=8, depth=2), optimizer=dict(name="sgd", lr=0.1),
              train=dict(steps=2), eval=dict(sharpness_every=0, test_every=0),
              sweep=dict(grid={"optimizer.lr": [0.1, 0.2]}))


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("command", ["plot", "report", "transfer", "export"])
@pytest.mark.parametrize("store, words", [
    (".", ". is a directory, not a catapult sweep store"),
    ("/", "/ is a directory, not a catapult sweep store"),
    ("..", ".. is a directory, not a catapult sweep store"),
    ("", "an empty path is not a catapult sweep store"),
])
def test_a_folder_or_nothing_as_the_store_is_refused(tmp_path, monkeypatch, capsys, command, store, words):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    extra = ["--out", "x.csv"] if command == "export" else []
    assert main([command, store, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"catapult {command}: error: {words}")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _files(tmp_path) == [work.relative_to(tmp_path)]


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.mark.parametrize("flags, words", [
    (["--executor", "local", "--num-cpus", "0"], "--num-cpus and --chunk-size need --executor ray"),
    (["--executor", "local", "--ray-address", ""], "--num-cpus and --chunk-size need --executor ray"),
    (["--executor", "ensemble", "--chunk-size", "1"], "--num-cpus and --chunk-size need --executor ray"),
    (["--executor", "ray", "--num-cpus", "0"], "--num-cpus must be >= 1, got 0"),
    (["--executor", "ray", "--ray-address", ""], "--ray-address '' is not auto, local, host:port"),
    (["--store", ""], "--store: an empty path is not a catapult sweep store"),
    (["--store", ".", "--dry-run"], "--store: . is a directory, not a catapult sweep store"),
])
def test_a_given_but_empty_or_zero_flag_is_refused_before_any_work(tmp_path, config, capsys, flags, words):
    code = main(["sweep", str(config), "--progress", "none", "--threads", "1", *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == [config.relative_to(tmp_path)]  # no store, no runs/tiny/sweep.db


@pytest.mark.parametrize("command", ["sweep", "plot", "report", "transfer", "export"])
def test_a_link_to_nothing_as_the_store_is_named_so(tmp_path, config, capsys, command):
    # a dangling link was "not a catapult sweep store ... left unchanged" (sweep) or "store not found"
    (tmp_path / "s.db").symlink_to(tmp_path / "gone" / "real.db")
    argv = ([str(config), "--store", "s.db", "--progress", "none", "--threads", "1"] if command == "sweep"
            else ["s.db", *(["--out", "x.csv"] if command == "export" else [])])
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert f"s.db is a link to {tmp_path / 'gone' / 'real.db'}, which does not exist" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db", "sweep.yaml"]
