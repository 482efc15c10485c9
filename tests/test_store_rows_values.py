"""Mutation pass 12 (sweep.store_rows): a cell's final and best values, and a logged row's counts,
against values written out by hand."""
from __future__ import annotations

from catapult.sweep.store_rows import best_metrics, final_metrics, metric_row
from catapult.sweep.store_schema import METRIC_COLUMNS


def test_a_finished_runs_final_test_values_are_its_last_logged_ones():
    rows = [{"train_loss": 3.0, "test_loss": 1.5, "test_accuracy": 0.5, "sharpness": 9.0},
            {"train_loss": 2.0, "test_loss": 0.7, "test_accuracy": 0.8},
            {"train_loss": 1.0, "train_accuracy": 0.9}]
    assert final_metrics(rows, "finished") == {"train_loss": 1.0, "train_accuracy": 0.9, "test_loss": 0.7,
                                               "test_accuracy": 0.8, "sharpness": 9.0}


def test_the_best_test_accuracy_is_the_largest_and_the_best_losses_the_smallest():
    rows = [{"train_loss": 2.0, "test_loss": 0.9, "test_accuracy": 0.2},
            {"train_loss": 0.5, "test_loss": 0.4, "test_accuracy": 0.9},
            {"train_loss": 1.0, "test_loss": 0.6, "test_accuracy": 0.5}]
    assert best_metrics(rows) == {"best_train_loss": 0.5, "best_test_loss": 0.4, "best_test_accuracy": 0.9}


def test_a_rows_step_and_product_count_are_stored_as_integers():
    row = metric_row(3, {"step": 7, "sharpness": 2.5, "sharpness_matvecs": 12})
    stored = dict(zip(METRIC_COLUMNS, row[1:-1]))
    assert [(stored[k], type(stored[k])) for k in ("step", "sharpness_matvecs", "sharpness")] == \
        [(7, int), (12, int), (2.5, float)]
