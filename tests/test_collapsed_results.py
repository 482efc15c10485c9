"""A collapsed cell (output constant across inputs, trained to the end) is a result: the store keeps it
finished with its final values. Before, three places read only ``finished`` as a result and dropped it:
the default trajectory cells (an all-collapsed sweep drew none), a phase-grid cell whose seeds all
collapsed with the metric unmeasured (drawn as "missing", not yet run), and the demo table (a
collapsed run's final loss and sharpness shown as '-')."""
from __future__ import annotations

from catapult.demo import report_table
from catapult.plots.phase import default_trajectory_cells, phase_grid

AXES = [{"key": "optimizer.lr", "labels": ["0.1", "0.2", "0.4"], "values": [0.1, 0.2, 0.4]}]


def _cell(i, status, lr, **values):
    return {"id": i, "status": status, "swept": {"optimizer.lr": lr}, "config": {}, "summary": {}, **values}


def test_the_predicate():
    from catapult.engine.records import has_final_values

    assert [s for s in ("finished", "collapsed", "diverged", "failed", "pending", "running", "interrupted")
            if has_final_values(s)] == ["finished", "collapsed"]


def test_an_all_collapsed_sweep_draws_its_best_and_worst_trajectories():
    cells = [_cell(1, "collapsed", 0.1, test_accuracy=0.10), _cell(2, "collapsed", 0.2, test_accuracy=0.12),
             _cell(3, "collapsed", 0.4, test_accuracy=0.09)]
    assert default_trajectory_cells(cells, "test_accuracy") == [2, 3]   # max 0.12, min 0.09: read off above
    cells.append(_cell(4, "diverged", 0.4, test_accuracy=None))
    assert default_trajectory_cells(cells, "test_accuracy") == [2, 3, 4]


def test_a_cell_whose_seeds_collapsed_unmeasured_is_a_result_not_missing():
    # sharpness unmeasured (None) everywhere; lr 0.1 finished, 0.2 collapsed, 0.4 never run (no cell)
    cells = [_cell(1, "finished", 0.1, sharpness=None, seed=0), _cell(2, "collapsed", 0.2, sharpness=None)]
    grid = phase_grid(cells, AXES, "sharpness", x="optimizer.lr", y=None)
    assert grid.status == [["ok", "partial", "missing"]]


def test_the_demo_table_shows_a_collapsed_runs_final_values():
    config = {"name": "r", "model": {"parametrization": "sp"}, "schedule": {"warmup_steps": 0}}
    summary = {"status": "collapsed", "diverged_at": None, "catapults": [], "lambda_0": 4.0, "lr_target": 0.5,
               "final_train_loss": 2.302585, "peak_train_loss": 2.5, "final_sharpness": 3.0, "threshold_target": 4.0}
    row = report_table([config], {"r": summary}).splitlines()[2].split("|")[1:-1]
    # final loss, final sharpness and 3.0 / 4.0 = 0.75 (not '-')
    assert [row[5].strip(), row[8].strip(), row[10].strip()] == ["2.3", "3", "0.75"]


def test_the_sweep_progress_line_shows_a_collapsed_cells_test_accuracy():
    import io
    from types import SimpleNamespace

    from catapult.sweep.progress import SweepProgress

    stream = io.StringIO()
    progress = SweepProgress(2, {}, mode="lines", stream=stream)
    progress.update(0, "collapsed", {"optimizer.lr": 0.1}, SimpleNamespace(summary={"final_test_accuracy": 0.1}))
    progress.update(1, "finished", {"optimizer.lr": 0.2}, SimpleNamespace(summary={"final_test_accuracy": 0.5}))
    assert [" test_acc 0.1000 " in line for line in stream.getvalue().splitlines()] == [True, False]
    assert " test_acc 0.5000 " in stream.getvalue().splitlines()[1]
