"""A sweep config with no ``name:`` takes its file's stem, as a run config does; a stem that gives no
run name (``ü.yaml``, ``-x.yaml``, ``...yaml``) was refused by `catapult sweep` as
``name: expected a run name ..., got '_'`` -- a name the user never wrote (``catapult train`` of the same
file said what was wrong). Both now say it the same way, with the file's other problems."""
from __future__ import annotations

import pytest

from catapult import cli
from catapult.config import ConfigError
from catapult.sweep.spec import load_sweep

GRID = ("data: {name: digits, n_train: 32, n_test: 16}\nmodel: {name: mlp, width: 8, depth: 2}\n"
        "train: {steps: 1}\neval: {sharpness_every: 0}\nsweep: {grid: {optimizer.lr: [0.1, 0.2]}}\n")


@pytest.mark.parametrize("file, stem", [("ü.yaml", "ü"), ("-x.yaml", "-x"), ("...yaml", "..")])
def test_sweep_says_the_file_gives_no_name(tmp_path, capsys, monkeypatch, file, stem):
    monkeypatch.chdir(tmp_path)
    (tmp_path / file).write_text(GRID)
    for extra in ([], ["--dry-run"]):
        assert cli.main(["sweep", f"./{file}", "--store", "s.db", *extra]) == 2
        err = capsys.readouterr().err
        assert f"name: not set, and the config file's name {file!r} gives no run name (its stem {stem!r}" in err
        assert "got '" not in err and not (tmp_path / "s.db").exists()
    assert cli.main(["sweep", f"./{file}", "--store", "s.db", "name=ok", "--dry-run"]) == 0   # the remedy it names
    assert "2 cells over optimizer.lr" in capsys.readouterr().out


def test_the_name_problem_comes_with_the_files_other_problems(tmp_path):
    path = tmp_path / "ü.yaml"
    path.write_text(GRID.replace("depth: 2", "depth: 2, bogus: 1"))
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert info.value.keys == ["name", "model.bogus"]
    assert "the config file's name 'ü.yaml' gives no run name" in str(info.value)
    # a stem that is a name is the sweep's name, its odd characters as _
    (tmp_path / "fig 1.yaml").write_text(GRID)
    assert load_sweep(tmp_path / "fig 1.yaml")[0]["name"] == "fig_1"
