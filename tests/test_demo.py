"""``catapult demo`` regenerates its own run directories: a second ``make demo`` must not stop at
the "existing run directory" guard that protects ``catapult train`` outputs."""
from __future__ import annotations

from catapult.demo import _run_one


def test_a_demo_run_writes_over_its_own_earlier_output(tmp_path):
    config = {"name": "tiny", "data": {"name": "digits", "n_train": 32, "n_test": 16},
              "model": {"name": "mlp", "width": 8, "depth": 2}, "optimizer": {"name": "sgd", "lr": 0.1},
              "train": {"steps": 2}, "eval": {"sharpness_every": 0}}
    out = tmp_path / "tiny"
    first = _run_one(config, str(out))
    second = _run_one(config, str(out))
    assert first[1]["final_train_loss"] == second[1]["final_train_loss"]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.csv", "model.pt", "summary.json", "trajectories.png"]
