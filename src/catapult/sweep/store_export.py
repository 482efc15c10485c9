"""Export a sweep store as a table: one row per cell (CSV, or Parquet with ``pyarrow``).

A ``running`` cell that no live driver holds is exported with status ``interrupted``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from catapult.sweep.store import BEST_METRICS, FINAL_METRICS

__all__ = ["EXPORT_COLUMNS", "export_table", "write_csv", "write_parquet"]


#: Columns after the swept keys in an export, in order.
EXPORT_COLUMNS = ("status", *FINAL_METRICS, *BEST_METRICS, "lambda_0", "lr_target", "steps_completed",
                  "diverged_at", "wall_time_s", "error")


def export_table(store) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)``: one row per cell: ``cell_id``, one column per swept key (its dotted
    name, the value as in the config, e.g. ``"2^3/lambda0"``), then :data:`EXPORT_COLUMNS`
    (final metrics ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
    ``sharpness``; best values; lambda_0; absolute ``lr_target``; ...). Missing values are ``None``.
    """
    keys = [a["key"] for a in store.axes()]
    cells = store.cells()
    for cell in cells:
        for key in cell["swept"]:
            if key not in keys:
                keys.append(key)
    columns = ["cell_id", *keys, *EXPORT_COLUMNS]
    rows = []
    for cell in cells:
        row = [cell["id"], *(cell["swept"].get(k) for k in keys)]
        row += [cell.get(c) for c in EXPORT_COLUMNS]
        rows.append(row)
    return columns, rows


def write_csv(store, path: str | Path) -> Path:
    """Write :func:`export_table` as CSV (empty cell for ``None``; floats round-trip exactly)."""
    import csv

    columns, rows = export_table(store)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return path


def write_parquet(store, path: str | Path) -> Path:
    """Write :func:`export_table` as Parquet (needs the optional ``pyarrow``). Swept columns
    whose values mix numbers and strings are written as strings."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("parquet export needs pyarrow, an optional dependency: "
                          "pip install 'catapult[parquet]' (or export --format csv)") from None
    columns, rows = export_table(store)
    data = {}
    for j, name in enumerate(columns):
        values = [row[j] for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            values = [None if v is None else str(v) for v in values]
        elif kinds == {int, float}:
            values = [None if v is None else float(v) for v in values]
        data[name] = values
    table = pa.table(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))
    return path
