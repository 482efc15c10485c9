"""Rules of :mod:`catapult.plots.phase` that survived mutation under the plot, audit and seed
tests, each checked on hand-made cells: the default y axis (``schedule.warmup_steps`` when swept,
wherever it stands), a cell's place on an axis from its id (grid order, first axis slowest),
the trajectory cells (best, worst, then the first diverged, at most ``limit``), and no "best" cell
for a spectrum column (the top eigenvalue or trace has no better direction)."""
from __future__ import annotations

from catapult.plots.phase import default_axes, default_trajectory_cells, phase_grid, value_positions
from catapult.sweep.spec import canonical_json


def _axes(**values):
    return [{"key": k.replace("__", "."), "values": v, "labels": [str(x) for x in v]} for k, v in values.items()]


def test_the_default_y_is_the_warmup_wherever_it_stands():
    axes = _axes(optimizer__lr=[0.1, 0.2], model__width=[8, 16], schedule__warmup_steps=[1, 8])
    assert default_axes(axes) == ("optimizer.lr", "schedule.warmup_steps")
    assert default_axes(axes[:2]) == ("optimizer.lr", "model.width")


def test_a_stored_value_takes_its_place_from_the_cells_id():
    # a: 2 values (stride 3), b: 3 values; cells store values the grid wrote otherwise
    axes = _axes(a=[1, 2], b=[10, 20, 30])
    cells = [{"id": i, "swept": {"a": 0.5 + i // 3, "b": 100 + i % 3}} for i in range(6)]
    assert value_positions(axes, "a", cells) == {"1": 0, "2": 1, canonical_json(0.5): 0, canonical_json(1.5): 1}
    assert value_positions(axes, "b", cells) == {"10": 0, "20": 1, "30": 2, "100": 0, "101": 1, "102": 2}


def test_trajectory_cells_are_best_worst_then_first_diverged_up_to_the_limit():
    cells = [{"id": 0, "status": "diverged"}, {"id": 1, "status": "finished", "test_accuracy": 0.6},
             {"id": 2, "status": "finished", "test_accuracy": 0.9}, {"id": 3, "status": "finished", "test_accuracy": 0.7},
             *({"id": i, "status": "diverged"} for i in range(4, 9))]
    assert default_trajectory_cells(cells) == [2, 1, 0, 4]
    assert default_trajectory_cells(cells, limit=3) == [2, 1, 0]
    assert default_trajectory_cells(cells, "test_loss") == [0, 4, 5, 6]   # no finished loss: diverged only


def test_a_spectrum_column_has_no_best_cell():
    axes = _axes(optimizer__lr=[0.1, 0.2])
    cells = [{"id": i, "status": "finished", "swept": {"optimizer.lr": lr}, "eig_1": 3.0 + i, "test_accuracy": 0.5 + i / 10,
              "hessian_trace": 10.0 + i} for i, lr in enumerate((0.1, 0.2))]
    for metric in ("eig_1", "hessian_trace"):
        grid = phase_grid(cells, axes, metric)
        assert grid.values.tolist() == [[cells[0][metric], cells[1][metric]]] and grid.best is None
    assert phase_grid(cells, axes, "test_accuracy").best == (0, 1)
