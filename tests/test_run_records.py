"""Which CSV files catapult takes for a run's ``metrics.csv`` (:func:`catapult.files.is_run_record`:
header ``step, ...`` with ``train_loss``) and for its own (:func:`written_by_catapult`: a run record
counts, though it has no export's ``status`` column). Both rules survived mutation: a CSV whose
header only starts with ``step`` passed as a run's, and a run's own ``metrics.csv`` was no longer
catapult's. So did two more rules below: a ``.partial-`` file that only begins with a run file's
first bytes (it must be all a cut-off prefix of them) and ``recorded_digests`` keeping non-string
entries of a hand-edited summary."""
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


def test_a_partial_file_is_ours_only_when_all_of_it_is_a_cut_off_start(tmp_path):
    # a stopped write leaves .partial-NAME holding a prefix of the bytes NAME begins with; a
    # file that begins so and goes on (a user's zip under that name) is not a cut-off one
    from catapult.files import PARTIAL_PREFIX, partial_of_ours

    entry = tmp_path / (PARTIAL_PREFIX + "model.pt")
    verdicts = []
    for data in (b"", b"PK", b"PK\x03\x04", b"PK\x03\x04 and a user's archive", b"PX"):
        entry.write_bytes(data)
        verdicts.append(partial_of_ours(entry, lambda path, name: False, {"model.pt": b"PK\x03\x04"}.get))
    assert verdicts == [True, True, True, False, False]


def test_recorded_digests_are_the_summarys_digest_strings_only(tmp_path):
    # a summary edited by hand (or by another tool) may hold anything under "written": only
    # strings are digests to compare a file with; a null or a number records nothing
    import json

    from catapult.files import WRITTEN, recorded_digests

    digest = "sha256:" + "0" * 64
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"status": "finished", "steps_completed": 1,
                                   WRITTEN: {"model.pt": digest, "metrics.csv": None, "trajectories.png": 3}}))
    assert recorded_digests(summary) == {"model.pt": digest}
