"""A run whose training finished but whose step after it failed (the figure on a full disk, the
summary) removed its whole ``--out`` folder, ``model.pt`` and ``metrics.csv`` included: hours of
training lost for a plot. Now what the work produced stays (``train``/``train-ddp``: config.yaml,
metrics.csv, model.pt; ``coord-check``: coord_check.csv and config.yaml; ``demo``: its runs'
folders) and the command exits 1 naming the file that failed and what is kept. A failure before
(bad input, the weights themselves not written) still removes the folder it made. The full disk is
played by the writer of the failing file (an OSError ENOSPC, as a small tmpfs raises)."""
from __future__ import annotations

import csv
import errno

import pytest
import torch

from catapult import cli, demo
from catapult.engine import loop
from catapult.engine.run_dir import MANIFEST
from tiny_run import tiny_config, tiny_demo_configs


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([*map(str, argv), "--progress", "none", "--threads", "1"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_config("kept"))
    return path


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("failing", ["trajectories.png", "summary.json"])
def test_train_whose_figure_or_summary_fails_keeps_its_weights_and_metrics(tiny, tmp_path, capsys, monkeypatch, failing):
    assert _cli(capsys, "train", tiny, "--out", tmp_path / "clean")[0] == 0   # the truth: the same run, whole
    if failing == "trajectories.png":
        monkeypatch.setattr(loop, "plot_run", _full)
    else:
        real = loop.write_text_whole
        monkeypatch.setattr(loop, "write_text_whole",
                            lambda path, text: _full() if path.name == "summary.json" else real(path, text))
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", tiny, "--out", out)
    assert code == 1, err
    assert f"{out / failing} could not be written (No space left on device)" in err, err
    assert f"{out / 'model.pt'}" in err and f"{out / 'metrics.csv'}" in err and "kept" in err, err
    kept = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.csv", "model.pt", MANIFEST} <= kept and "summary.json" not in kept
    assert ("trajectories.png" in kept) == (failing == "summary.json")
    weights = torch.load(out / "model.pt", weights_only=True)
    truth = torch.load(tmp_path / "clean" / "model.pt", weights_only=True)
    assert weights.keys() == truth.keys() and all(torch.equal(weights[k], truth[k]) for k in truth)
    got, want = _rows(out / "metrics.csv"), _rows(tmp_path / "clean" / "metrics.csv")
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in want] and len(want) == 3   # steps 0, 1, 2
    monkeypatch.undo()
    assert _cli(capsys, "train", tiny, "--out", out, "--overwrite")[0] == 0   # the kept folder is a run's own
    assert (out / "summary.json").is_file()
    # model.pt is the work's product: a failure writing it (or before) still removes the folder it made
    monkeypatch.setattr(torch, "save", _full)
    code, err = _cli(capsys, "train", tiny, "--out", tmp_path / "lost")
    assert code == 2 and "No space left on device" in err and "kept" not in err, err
    assert not (tmp_path / "lost").exists()


def test_coord_check_whose_figure_fails_keeps_its_measurements(tmp_path, capsys, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text("name: cc\ndata: {name: digits, n_train: 64, n_test: 32}\n"
                      "model: {name: mlp, width: 16, depth: 3, activation: relu, parametrization: sp}\n"
                      "optimizer: {name: sgd, lr: 0.125}\ntrain: {steps: 1, batch_size: null}\n"
                      "eval: {sharpness_every: 0, test_every: 0}\n")
    args = ["coord-check", config, "coord_check.densities=[0.5, 1.0]", "coord_check.steps=1", "coord_check.seeds=[0]"]
    assert _cli(capsys, *args, "--out", tmp_path / "clean")[0] == 0
    monkeypatch.setattr("catapult.coord_check.plot_coord_check", _full)
    out = tmp_path / "cc"
    code, err = _cli(capsys, *args, "--out", out)
    assert code == 1 and "could not be written (No space left on device)" in err, err
    assert f"{out / 'coord_check.csv'}" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "coord_check.csv"]
    assert (out / "coord_check.csv").read_text() == (tmp_path / "clean" / "coord_check.csv").read_text()


@pytest.mark.parametrize("failing", ["figure", "report"])
def test_demo_whose_figure_or_report_fails_keeps_its_runs(tmp_path, monkeypatch, failing):
    from catapult.engine.run_dir import ResultsKept

    configs = tiny_demo_configs()
    if failing == "figure":
        monkeypatch.setattr("catapult.plots.plot_trajectories", _full)
    else:
        monkeypatch.setattr(demo, "write_text_whole", _full)
    out = tmp_path / "demo"
    with pytest.raises(ResultsKept) as failed:
        demo.run_demo(out, workers=1, echo=lambda line: None, configs=configs)
    name = configs[0]["name"]
    assert failed.value.failed == (demo.figure_name("mup") if failing == "figure" else "report.md")
    assert name in failed.value.kept
    assert {"model.pt", "metrics.csv", "summary.json"} <= {p.name for p in (out / name).iterdir()}
    assert (out / demo.figure_name("mup")).exists() == (failing == "report")
