"""What the training loop's per-step path may cost: work that a step can leave to a hot moment
(a flush, the end of a chunk) is not done inside the step, where it runs cold (RESULTS, "Engine
overhead"). Each test also pins the values: the same bytes, the same rows."""
from __future__ import annotations

import math

from catapult.engine import records
from catapult.engine.records import METRIC_COLUMNS, MetricsFile, write_metrics


def _rows(n: int) -> list[dict]:
    rows = []
    for t in range(n):
        row = dict.fromkeys(METRIC_COLUMNS)
        row.update(step=t, lr=0.1 * (t + 1), threshold=2 / (0.1 * (t + 1)), train_loss=1.0 / (t + 3),
                   train_accuracy=t / 7, test_loss=math.inf if t == 2 else None, sharpness=math.nan if t == 1 else None)
        rows.append(row)
    return rows


def test_metrics_file_formats_rows_at_its_flushes_not_at_each_write(tmp_path, monkeypatch):
    # every write formatted its nine cells (9 csv_cell calls, ~35 us of a step's CPU, cold);
    # now the rows wait for the flush (first row, then once a second, close) and the file is the
    # same bytes as write_metrics (csv_text) gives for those rows
    calls = []
    cell = records.csv_cell
    monkeypatch.setattr(records, "csv_cell", lambda value: calls.append(value) or cell(value))
    rows = _rows(5)
    mf = MetricsFile(tmp_path / "metrics.csv", flush_seconds=3600.0)
    mf.write(rows[0])                      # the first row is flushed at once
    assert len(calls) == len(METRIC_COLUMNS)
    for row in rows[1:]:
        mf.write(row)
    assert len(calls) == len(METRIC_COLUMNS)  # nothing formatted inside the later steps
    mf.close()
    assert len(calls) == len(METRIC_COLUMNS) * len(rows)
    monkeypatch.undo()
    write_metrics(rows, tmp_path / "whole.csv")
    assert (tmp_path / "metrics.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
