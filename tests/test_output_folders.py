"""Every output file flag of the CLI makes the missing folders of the path the user named (as
`catapult train --out` and a new sweep store make theirs): `--plot runs/spectrum.png` in a fresh
clone was refused ("the folder ... does not exist") until something had made runs/. Nothing is
written outside the named path; a refused command leaves no folder behind; a file or a link to
nothing where a folder goes is still refused before any work (exit 2, naming the flag)."""
from __future__ import annotations

import os

import pytest

from catapult import cli
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from sweep_fakes import FakeRun
from test_spectrum_cli import CONFIG

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("outs") / "s.db"
    config = cfg.validate({"name": "p", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [-3, 0]},
                                 "schedule.warmup_steps": {"log2": [0, 3]}}, "seeds": [0]})
    run_sweep(config, spec, path, run_fn=FakeRun(diverge_above=1.0), lambda0_fn=lambda c: 2.0, progress="none")
    return path


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files)


@pytest.mark.parametrize("argv, written, head", [
    (["export", "{store}", "--out", "runs/a/cells.csv"], ["runs/a/cells.csv"], b"cell_id"),
    (["plot", "{store}", "--metric", "train_loss", "--out", "runs/a/h.png", "--trajectories-out", "runs/b/t.png"],
     ["runs/a/h.png", "runs/b/t.png"], PNG),
    (["transfer", "{store}", "--out", "runs/a/t.png"], ["runs/a/t.png"], PNG),
    (["report", "{store}", "--out", "runs/a/page.html"], ["runs/a/page.html"], b"<!"),
])
def test_a_sweep_output_in_a_missing_folder_is_written_there(argv, written, head, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([a.format(store=store) for a in argv]) == 0
    folders = sorted({os.path.dirname(w) for w in written} | {"runs"})
    assert _tree(tmp_path) == sorted(folders + written)
    assert all((tmp_path / w).read_bytes().startswith(head) for w in written)


def test_the_spectrum_plot_in_a_missing_folder_is_written_there(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    assert cli.main(["spectrum", "c.yaml", "--top-k", "1", "--trace-matvecs", "0", "--density-runs", "1",
                     "--density-steps", "5", "--plot", "runs/spectrum.png"]) == 0
    assert (tmp_path / "runs" / "spectrum.png").read_bytes().startswith(PNG)
    assert _tree(tmp_path) == ["c.yaml", "runs", "runs/spectrum.png"]


def test_a_refused_command_leaves_no_folder(store, tmp_path, monkeypatch, capsys):
    """The store is read inside the writing block: a store that is not one is refused there, and
    the folders made for its report are removed again."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not_a_store.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    assert cli.main(["report", "not_a_store.db", "--out", "runs/a/page.html"]) == 2
    assert _tree(tmp_path) == ["not_a_store.db"]
    assert cli.main(["report", str(store), "--out", "runs/a/page.html"]) == 0     # the same path, a store
    assert _tree(tmp_path) == ["not_a_store.db", "runs", "runs/a", "runs/a/page.html"]


@pytest.mark.parametrize("make, words", [
    (lambda root: (root / "runs").write_text("a file"), "runs is a file, not a folder"),
    (lambda root: os.symlink(root / "nowhere", root / "runs"), "runs is a link to nothing, not a folder"),
])
def test_what_stands_where_a_folder_goes_is_refused_before_any_work(make, words, store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    assert cli.main(["export", str(store), "--out", "runs/a/cells.csv"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and words in err


@pytest.mark.parametrize("option", ["--plot", None])
def test_a_folder_the_file_system_refuses_below_folders_made_leaves_none_of_them(option, tmp_path):
    # mkdir makes runs/a, then the file system refuses the next name (longer than NAME_MAX, 255 bytes
    # on Linux and macOS): the folders made on the way are removed again. Before, rmdir of the refused
    # name raised ENAMETOOLONG (not FileNotFoundError), read as "something was written there", and
    # runs/a stayed behind
    from catapult.cli.common import output_folders

    path = tmp_path / "runs" / "a" / ("x" * 300) / "f.png"
    with pytest.raises(cfg.ConfigError if option else OSError) as refused:
        with output_folders(path, option):
            pass
    if option:
        assert str(refused.value).startswith(f"{option}: cannot create the directory {tmp_path / 'runs' / 'a'}/")
    assert _tree(tmp_path) == []
