"""executors.run_cell: a run's outcome becomes a cell result the store can record, whatever
run_fn did (raised, or returned a status the store has no column value for)."""
from __future__ import annotations

from types import SimpleNamespace

from catapult.sweep.executors import Cell, CellResult, run_cell


def _cell():
    return Cell(3, {"name": "c"})


def test_a_status_the_store_does_not_know_is_a_failed_cell_naming_it():
    rows = [{"step": 0, "train_loss": 1.0}]
    result = run_cell(lambda config, progress: SimpleNamespace(status="stopped", metrics=rows, summary={"a": 1}),
                      _cell())
    assert isinstance(result, CellResult) and result.status == "failed"
    assert result.error == "run_fn returned status 'stopped'" and result.metrics == rows


def test_an_exception_is_a_failed_cell_with_its_text_and_the_known_statuses_pass():
    def boom(config, progress):
        raise RuntimeError("out of memory")
    failed = run_cell(boom, _cell())
    assert failed.status == "failed" and failed.error.startswith("RuntimeError: out of memory")
    for status in ("finished", "diverged", "collapsed", "failed"):
        out = run_cell(lambda config, progress: CellResult(status, [], {}), _cell())
        assert out.status == status and out.worker is not None
