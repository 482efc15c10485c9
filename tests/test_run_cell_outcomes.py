"""executors.run_cell: a run's outcome becomes a cell result the store can record, whatever
run_fn did (raised, or returned a status the store has no column value for)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

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


def test_cells_run_at_the_executors_thread_count_which_is_restored_after():
    import torch

    from catapult.sweep.executors import LocalExecutor, torch_threads

    original = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1: a thread count left at the cell's 1 must show
    before = torch.get_num_threads()
    seen = []

    def run_fn(config, progress):
        seen.append(torch.get_num_threads())
        return CellResult("finished", [], {})
    results = list(LocalExecutor(run_fn, threads=1).run([Cell(0, {}), Cell(1, {})]))
    assert [i for i, _ in results] == [0, 1] and seen == [1, 1] and torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("a cell's failure")
    after = torch.get_num_threads()
    torch.set_num_threads(original)
    assert after == before == 2


def test_a_result_without_a_worker_is_named_by_the_one_that_ran_it_and_errors_keep_their_last_frame():
    from catapult.sweep.executors import error_text, to_cell_result

    assert to_cell_result(CellResult("finished", [], {}), "host:1").worker == "host:1"
    assert to_cell_result(CellResult("finished", [], {}, worker="other:2"), "host:1").worker == "other:2"

    def deep(k):
        if k == 0:
            raise ValueError("the innermost cause")
        deep(k - 1)
    try:
        deep(50)
    except ValueError as err:
        text = error_text(err, limit=200)
    head, tail = text.split("\n", 1)
    assert head == "ValueError: the innermost cause"
    assert len(tail) == 200 and tail.rstrip().endswith("ValueError: the innermost cause")


class _NoMessage(Exception):
    def __str__(self):
        raise RuntimeError("no message here")


def test_an_exception_whose_message_raises_is_still_one_failed_cell():
    """Formatting the error (``f"{err}"``) raised out of run_cell and stopped the sweep: "one cell's failure must
    not stop the sweep". Now the cell fails with a stand-in message and the traceback."""
    def boom(config, progress):
        raise _NoMessage()
    failed = run_cell(boom, _cell())
    assert failed.status == "failed"
    assert failed.error.startswith("_NoMessage: (its message raised RuntimeError)\n")
    assert "in boom" in failed.error   # the traceback follows
