"""bench/fig3_wrn_small.py's table on a store of one seed (``sweep.seeds=[0]``, as a shrunk rerun has):
the accuracy column is that seed's best test accuracy. Before, ``statistics.stdev`` of one value raised
StatisticsError and the script printed a traceback instead of its table."""
from __future__ import annotations

from bench_module import bench_module


def _cell(x: int, status: str, acc: float) -> dict:
    return {"model.parametrization": "sp", "loss": "mse", "schedule.warmup_steps": 8, "optimizer.lr": f"2^{x}/lambda0",
            "seed": 0, "schedule.decay": "cosine", "train.steps": 12, "status": status, "best_test_accuracy": acc}


def test_one_seed_gives_its_own_accuracy_and_boundaries(tmp_path, monkeypatch, capsys):
    script = bench_module("fig3_wrn_small")
    cells = [_cell(3, "finished", 0.875), _cell(4, "finished", 0.5), _cell(5, "diverged", 0.1)]
    monkeypatch.setattr(script, "read_cells", lambda store: cells)
    script.main(["store.db", "--out", str(tmp_path / "f.png")])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| SP, MSE"))
    cols = [c.strip() for c in row.split("|")]
    # divergence at x = 5 (the first diverged cell), failure at 5 too (4's best accuracy 0.5 >= 0.15),
    # and the largest x no seed failed at is 4, whose one seed reached 50.0 %
    assert cols[4:7] == ["5.00 (5)", "5.00 (5)", "50.0 (1 seed) (x = 4)"]
