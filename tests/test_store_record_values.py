"""Store.record's columns by hand: final values from the last row that has each, none of the test
values for a diverged run, best values over finite rows, steps_completed and lambda_0 read from
the metrics and the summary when not given."""
from __future__ import annotations

import math

from catapult import config as cfg
from catapult.sweep import parse_sweep
from catapult.sweep.executors import CellResult
from catapult.sweep.spec import expand
from catapult.sweep.spec_document import spec_document
from catapult.sweep.store import Store


def _store(path):
    config = cfg.validate({"name": "c", "train": {"steps": 10}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.01, 0.02, 0.04]}})
    store = Store(path)
    store.open_sweep(spec_document(config, spec), expand(config, spec))
    return store


def _row(step, loss, test=None, acc=None, sharp=None):
    return {"step": step, "train_loss": loss, "train_accuracy": 0.5, "test_loss": test, "test_accuracy": acc,
            "sharpness": sharp}


ROWS = [_row(0, 2.0, test=1.9, acc=0.20, sharp=5.0), _row(5, 1.0, test=0.7, acc=0.60, sharp=9.0),
        _row(8, 1.5, test=0.9, acc=0.40, sharp=7.0), _row(10, 0.8)]


def test_a_finished_cells_final_values_are_the_last_logged_ones_and_best_the_extremes(tmp_path):
    with _store(tmp_path / "s.db") as store:
        store.record(0, CellResult("finished", ROWS, {"lambda_0": 4.0, "lr_target": 0.25}))
        cell = store.cell(0)
    # final: train values of the last row; test values and sharpness of the last row having them (step 8)
    assert (cell["train_loss"], cell["test_loss"], cell["test_accuracy"], cell["sharpness"]) == (0.8, 0.9, 0.4, 7.0)
    # best: the smallest losses and the largest accuracy over every row
    assert (cell["best_train_loss"], cell["best_test_loss"], cell["best_test_accuracy"]) == (0.8, 0.7, 0.6)
    assert cell["lambda_0"] == 4.0 and cell["lr_target"] == 0.25   # from the summary
    assert cell["steps_completed"] == 10                             # no summary value: the last row's step


def test_a_diverged_cell_has_no_final_test_values_or_sharpness(tmp_path):
    rows = ROWS[:3] + [_row(9, math.inf)]
    with _store(tmp_path / "s.db") as store:
        store.record(1, CellResult("diverged", rows, {"steps_completed": 9, "diverged_at": 9}), lambda_0=3.0)
        cell = store.cell(1)
    assert cell["status"] == "diverged" and cell["train_loss"] == math.inf
    assert (cell["test_loss"], cell["test_accuracy"], cell["sharpness"]) == (None, None, None)
    assert (cell["best_test_loss"], cell["best_test_accuracy"]) == (0.7, 0.6)  # the store keeps best values
    assert cell["lambda_0"] == 3.0 and cell["steps_completed"] == 9 and cell["diverged_at"] == 9


def test_a_failed_seed_is_no_result_of_the_aggregate_and_inf_is_no_value():
    # n_seeds counts finished, diverged and collapsed seeds: a failed one (an exception, no
    # metrics) is none of them, though its lambda_0 was cached before it failed
    from test_store import _CellsStore

    from catapult.sweep.store_export import aggregate_table, mean_std

    def cell(i, seed, status, acc, lam):
        return {"id": i, "swept": {"optimizer.lr": 0.1, "seed": seed}, "status": status, "config": None,
                "test_accuracy": acc, "lambda_0": lam}
    cells = [cell(1, 0, "finished", 0.5, 2.0), cell(2, 1, "failed", None, 8.0), cell(3, 2, "finished", 0.7, 4.0)]
    columns, (row,) = aggregate_table(_CellsStore(cells))
    got = dict(zip(columns, row))
    assert (got["n_seeds"], got["n_finished"], got["status"]) == (2, 2, "mixed")
    assert (got["lambda_0_mean"], got["lambda_0_n"]) == (3.0, 2)
    # sample std over the finite values only: inf and nan are no measurement
    assert mean_std([1.0, math.inf, 3.0, -math.inf, math.nan]) == (2.0, math.sqrt(2.0), 2)


def test_counts_split_running_cells_into_held_and_interrupted(tmp_path):
    # three cells: 0 claimed by a live driver (this process), 1 claimed by a driver that released
    # it (stopped: its cell stays 'running', held by nobody), 2 pending
    with _store(tmp_path / "s.db") as store:
        live, gone = store.register_driver(), store.register_driver()
        assert store.claim(0, live) and store.claim(1, gone)
        store.release_driver(gone)
        assert store.interrupted_ids() == {1}
        plain, split = store.counts(), store.counts(interrupted=True)
    assert (plain["running"], plain["pending"]) == (2, 1) and "interrupted" not in plain
    assert (split["running"], split["interrupted"], split["pending"]) == (1, 1, 1)
