"""``coord-check``, ``demo --write-configs`` and ``demo`` that fail while writing (a full disk here)
left the ``--out`` folder they had created behind, empty or holding part of their files; ``train``
removes a run folder it made. They now remove the folder they made, and only that: a folder that was
there before stays, with what was in it."""
from __future__ import annotations

import errno

import pytest

from catapult import demo
from catapult.cli import main
from catapult.engine import coord_check_study
from tiny_run import tiny_demo_configs

TINY = """name: tiny
data: {name: digits, n_train: 64, n_test: 32}
model: {name: mlp, width: 16, depth: 3, activation: relu, parametrization: sp}
optimizer: {name: sgd, lr: 0.125}
train: {steps: 1, batch_size: null}
eval: {sharpness_every: 0, test_every: 0}
"""


def _full_disk_after(calls: int, real):
    count = {"n": 0}

    def write(path, text):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)
    return write


def _coord_check(tmp_path, out):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    return main(["coord-check", str(config), "coord_check.densities=[0.5, 1.0]", "coord_check.steps=1",
                 "coord_check.seeds=[0]", "--out", str(out), "--progress", "none", "--threads", "1"])


@pytest.mark.parametrize("written", [0, 1])
def test_coord_check_removes_the_folder_it_made_and_no_other(tmp_path, monkeypatch, capsys, written):
    monkeypatch.setattr(coord_check_study, "write_text_whole",
                        _full_disk_after(written, coord_check_study.write_text_whole))
    out = tmp_path / "new" / "cc"
    assert _coord_check(tmp_path, out) != 0 and "No space left" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "new").is_dir()   # the folder it made, not its parent
    monkeypatch.setattr(coord_check_study, "write_text_whole",
                        _full_disk_after(0, coord_check_study.write_text_whole))
    out.mkdir()   # there before: kept, though it fails
    assert _coord_check(tmp_path, out) != 0 and "No space left" in capsys.readouterr().err
    assert out.is_dir() and list(out.iterdir()) == []


@pytest.mark.parametrize("written", [0, 2])
def test_write_configs_removes_the_folder_it_made_and_no_other(tmp_path, monkeypatch, capsys, written):
    monkeypatch.setattr(demo, "write_text_whole", _full_disk_after(written, demo.write_text_whole))
    out = tmp_path / "configs" / "demo"
    assert main(["demo", "--write-configs", str(out)]) != 0 and "No space left" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "configs").is_dir()
    monkeypatch.setattr(demo, "write_text_whole", _full_disk_after(2, demo.write_text_whole))
    out.mkdir()   # there before, with a file of the user's: kept
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--write-configs", str(out)]) != 0 and "No space left" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_run_demo_removes_the_folder_it_made_and_no_other(tmp_path, monkeypatch):
    # a run that fails (its metrics.csv on a full disk) left demo/ behind; (a figure or the report
    # that fails after the runs keeps them: tests/test_results_kept_after_training.py)
    from catapult.engine import records

    def full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(records.MetricsFile, "write", full)
    out = tmp_path / "new" / "demo"
    with pytest.raises(OSError, match="No space left"):
        demo.run_demo(out, workers=1, echo=lambda line: None, configs=tiny_demo_configs())
    assert not out.exists() and (tmp_path / "new").is_dir()   # the folder it made, not its parent
    out.mkdir()   # there before, with a file of the user's: kept, though it fails
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OSError, match="No space left"):
        demo.run_demo(out, workers=1, echo=lambda line: None, configs=tiny_demo_configs())
    assert (out / "notes.txt").read_text() == "mine"
