"""Which CSV files catapult takes for a run's ``metrics.csv`` (:func:`catapult.files.is_run_record`:
header ``step, ...`` with ``train_loss``) and for its own (:func:`written_by_catapult`: a run record
counts, though it has no export's ``status`` column). Both rules survived mutation: a CSV whose
header only starts with ``step`` passed as a run's, and a run's own ``metrics.csv`` was no longer
catapult's."""
from catapult.engine.records import METRIC_COLUMNS
from catapult.files import is_run_record, written_by_catapult


def test_a_runs_metrics_csv_is_a_run_record_and_catapults(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(",".join(METRIC_COLUMNS) + "\n0,0.1,20.0,2.3\n")
    assert is_run_record(metrics) and written_by_catapult(metrics)


def test_a_csv_starting_with_step_but_without_train_loss_is_not(tmp_path):
    mine = tmp_path / "metrics.csv"
    mine.write_text("step,loss\n0,2.3\n")   # a user's own log under the run file's name
    assert not is_run_record(mine) and not written_by_catapult(mine)


def test_a_cut_off_mapping_starts_with_the_first_key_even_where_later_ones_may_be_skipped():
    from catapult.files import cut_off_mapping

    keys = ["name", "data", "model"]
    assert cut_off_mapping(b"name: a\nmodel: {}\n", keys)          # data skipped: allowed
    assert not cut_off_mapping(b"data:\n  x: 1\nmod", keys)         # no name first: not such a file
    assert not cut_off_mapping(b"model: {}\n", keys)
