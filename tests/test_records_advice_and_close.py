"""Mutation pass 12 (engine.records): unconverged_advice's three answers, word for word as its
docstring gives them, and MetricsFile.close closing its file where the last flush fails."""
from __future__ import annotations

import csv

import pytest

from catapult.engine.records import METRIC_COLUMNS, PRECISION_ADVICE, MetricsFile, unconverged_advice


def test_every_solve_below_its_budget_gets_only_the_precision_advice():
    # 1 sharpness + 1 top-k solve, both stopped below eval.sharpness_max_iter (short == total):
    # nothing "used all of" the budget
    summary = {"sharpness_unconverged": 1, "spectrum_unconverged": 1, "unconverged_below_budget": 2}
    assert unconverged_advice(summary) == f"they stopped below eval.sharpness_max_iter: {PRECISION_ADVICE}"


def test_a_summary_written_before_the_count_gets_both_remedies():
    summary = {"sharpness_unconverged": 3, "spectrum_unconverged": 0}
    assert unconverged_advice(summary) == ("raise eval.sharpness_max_iter where they used all of it; where they "
                                           f"stopped below it, {PRECISION_ADVICE}")


def test_a_mixed_run_counts_each_kind():
    summary = {"sharpness_unconverged": 4, "spectrum_unconverged": 1, "unconverged_below_budget": 2}
    assert unconverged_advice(summary) == (f"3 used all of eval.sharpness_max_iter: raise it; 2 stopped below it: "
                                           f"{PRECISION_ADVICE}")


def test_close_closes_the_file_where_its_last_flush_fails(tmp_path):
    # a full disk at the close's flush: the error names metrics.csv and the descriptor is not leaked
    path = tmp_path / "metrics.csv"
    records = MetricsFile(path, flush_seconds=3600.0)
    records.write(dict.fromkeys(METRIC_COLUMNS, 0.5))  # the first row, flushed at once
    records.write(dict.fromkeys(METRIC_COLUMNS, 0.25))  # waits for the close
    records.fh.close()
    records.fh = open("/dev/full", "w", newline="")
    records.writer = csv.writer(records.fh)
    with pytest.raises(OSError) as info:
        records.close()
    assert info.value.errno == 28 and info.value.filename == str(path)
    assert records.fh.closed


def test_the_solve_marks_are_read_back_as_ints(tmp_path):
    # 1 / 0 marks, not 1.0 / 0.0 (which compare equal to them: only their type tells)
    from catapult.engine.records import metric_columns, read_metrics, write_metrics

    columns = metric_columns({"eval": {"spectrum_top_k": 1, "sharpness_every": 1}})
    rows = [{**dict.fromkeys(columns), "step": 0, "eig_1": 2.5, "eig_converged": 1, "sharpness": 2.5,
             "sharpness_converged": 0}]
    write_metrics(rows, tmp_path / "metrics.csv", columns)
    (back,) = read_metrics(tmp_path / "metrics.csv")
    assert [(back[k], type(back[k])) for k in ("eig_converged", "sharpness_converged")] == [(1, int), (0, int)]
