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


def test_only_a_finished_run_has_final_test_values_and_they_skip_rows_that_hold_none():
    # mutation pass 21: a failed run's rows (SR2: only "diverged" was told apart), a last row whose test_loss is
    # None (SR4: taken as the final value), and the train accuracy of the last row itself, None (SR9)
    rows = [{"train_loss": 2.0, "train_accuracy": 0.5, "test_loss": 0.7}, {"train_loss": 1.0, "test_loss": None}]
    assert final_metrics(rows, "failed") == {"train_loss": 1.0, "train_accuracy": None}
    assert final_metrics(rows, "finished") == {"train_loss": 1.0, "train_accuracy": None, "test_loss": 0.7}


def test_best_values_pass_over_nan_and_a_row_without_extra_keys_has_no_json():
    # mutation pass 21: a NaN before the best loss (SR6: min([nan, 1.0]) is nan), and a row of known columns
    # only stores NULL, not '{}' (SR8)
    assert best_metrics([{"train_loss": float("nan")}, {"train_loss": 1.0}])["best_train_loss"] == 1.0
    assert metric_row(1, {"step": 0, "train_loss": 0.5})[-1] is None
