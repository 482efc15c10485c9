"""``train.steps: 0`` trains nothing: the run is the model at init. Under Adam the paper's
accuracy rule (final training accuracy below 1.5 x chance is a divergence) called it
``diverged (final_accuracy_below_1.5x_chance)``: a verdict on training that never happened.
The rule now applies to trained runs only; train, a local sweep and an ensemble sweep agree."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from catapult.cli import main

CONFIG = {"name": "zero", "seed": 1, "data": {"name": "digits", "n_train": 32, "n_test": 16},
          "model": {"name": "mlp", "width": 8, "depth": 2}, "optimizer": {"name": "adam", "lr": 0.001},
          "train": {"steps": 0}, "eval": {"sharpness_every": 0}}


def test_train_reports_zero_steps_finished(tmp_path, capsys):
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main(["train", str(path), "--progress", "none", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["failure"], summary["steps_completed"]) == ("finished", None, 0)
    assert summary["final_train_accuracy"] < 0.15   # below 1.5 x chance: the rule would have fired


@pytest.mark.parametrize("executor", ["local", "ensemble"])
def test_a_sweep_reports_zero_steps_finished(tmp_path, capsys, executor):
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(dict(CONFIG, sweep={"grid": {"optimizer.lr": [0.001]}, "seeds": [1, 3]})))
    store = tmp_path / "zero.db"
    assert main(["sweep", str(path), "--store", str(store), "--executor", executor,
                 "--progress", "none", "--threads", "1"]) == 0
    out = tmp_path / "zero.csv"
    assert main(["export", str(store), "--out", str(out)]) == 0
    capsys.readouterr()
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], r["steps_completed"]) for r in rows] == [("finished", "0")] * 2
    assert all(float(r["train_accuracy"]) < 0.15 for r in rows)   # 0.094, 0.031: the rule would have fired
