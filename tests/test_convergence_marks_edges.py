"""Mutation pass 12 (the solve marks in the store's export and the phase diagram): which values a
mark is taken from, where it stands, and which metrics have one. Truth: hand-written cells and
rows, and the docstrings' rules."""
from __future__ import annotations

import pytest

from catapult.plots.phase import convergence_mark, phase_grid
from catapult.sweep.store import Store
from catapult.sweep.store_export import last_spectrum, spectrum_columns

AXES = [{"key": "optimizer.lr", "values": [0.1], "labels": ["0.1"]},
        {"key": "seed", "values": [0, 1, 2], "labels": ["0", "1", "2"]}]


def test_only_the_seeds_whose_value_is_averaged_count_as_unconverged():
    # a diverged seed (its sharpness is not averaged: it would flatter the cell) or one without a
    # finite value has a mark of 0 that no value in the cell came from
    cells = [{"id": 0, "status": "finished", "sharpness": 4.0, "sharpness_converged": 1},
             {"id": 1, "status": "diverged", "sharpness": 9.0, "sharpness_converged": 0},
             {"id": 2, "status": "finished", "sharpness": float("nan"), "sharpness_converged": 0}]
    for seed, cell in enumerate(cells):
        cell["swept"] = {"optimizer.lr": 0.1, "seed": seed}
    grid = phase_grid(cells, AXES, "sharpness", "optimizer.lr", None)
    assert grid.values.tolist() == [[4.0]] and grid.counts.tolist() == [[1]]
    assert grid.unconverged.tolist() == [[0]]


def test_the_trace_has_no_convergence_mark():
    # Hutch++ spends a fixed budget: eig_converged marks the top-k solve, not hessian_trace
    assert convergence_mark("hessian_trace") is None
    assert convergence_mark("eig_12") == "eig_converged"


def test_a_cells_eig_mark_is_that_of_the_row_its_last_eig_values_came_from():
    # a last eig_1 from a row without a mark has none, not an earlier row's
    class Rows:
        def metrics(self, cell_id):
            return [{"eig_1": 3.0, "eig_converged": 0}, {"eig_1": 4.0}]

    cell = {"id": 1, "status": "finished", "config": {"eval": {"spectrum_top_k": 1}}}
    assert last_spectrum(Rows(), cell) == {"eig_1": 4.0}


def test_the_sharpness_mark_is_the_last_column_after_the_eig_mark():
    spectra = [{"eig_1": 2.0, "eig_converged": 1, "sharpness_converged": 0}, {"hessian_trace": 5.0}]
    assert spectrum_columns(spectra) == ["eig_1", "hessian_trace", "eig_converged", "sharpness_converged"]


@pytest.mark.parametrize("column", ["sharpness_converged", "train_loss) OR (1 = 1", "nope"])
def test_last_measured_takes_only_the_metrics_tables_columns(tmp_path, column):
    # the column goes into the SQL text: anything but a metrics column is refused, naming it
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(ValueError, match=r"last_measured: column=.* is not one of"):
            store.last_measured(1, column)


def test_last_measured_is_the_last_row_with_a_value_in_the_column(tmp_path):
    # rows after the last measurement (sharpness_every 2: odd steps have none) are not it
    from types import SimpleNamespace

    cell = SimpleNamespace(id=0, config={"name": "c"}, swept={"optimizer.lr": 0.1})
    rows = [{"step": t, "train_loss": 1.0 / (t + 1), "sharpness": 10.0 + t if t % 2 == 0 else None,
             "sharpness_converged": t % 4 // 2} for t in range(4)]
    with Store(tmp_path / "s.db") as store:
        store.open_sweep({"spec": 1}, [cell])
        store.record(0, SimpleNamespace(status="finished", metrics=rows, summary={}))
        row = store.last_measured(0, "sharpness")
        assert (row["step"], row["sharpness"], row["sharpness_converged"]) == (2, 12.0, 1)
        assert store.last_measured(0, "test_loss") is None
