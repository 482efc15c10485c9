"""A swept value that is a list (``optimizer.betas``) or a mapping: the CSV export writes its JSON
text, which the standard ``csv`` module and ``json.loads`` (independent readers) give back as the
value; Python's ``str`` wrote ``['flip', 'crop']`` and ``[True, None]``, which no JSON reader takes.
Parquet writes a column of lists as its list type, and where the items mix types the same JSON text."""
from __future__ import annotations

import csv
import json

import pytest

from catapult.sweep.store_export import write_csv, write_parquet

_VALUES = [[0.9, 0.999], ["flip", "crop"], [True, None], {"lr": 0.1, "name": "adam"}, [float("inf"), 1]]


class _Store:
    def __init__(self, key, values):
        self.key = key
        self._cells = [{"id": i + 1, "swept": {key: v}, "status": "finished", "config": None}
                       for i, v in enumerate(values)]

    def axes(self):
        return [{"key": self.key}]

    def cells(self):
        return self._cells

    def metrics(self, cell_id):
        return []


def test_list_cells_of_the_csv_export_read_back_as_json(tmp_path):
    path = write_csv(_Store("optimizer.betas", _VALUES), tmp_path / "export.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [json.loads(r["optimizer.betas"]) for r in rows] == _VALUES
    assert rows[0]["optimizer.betas"] == "[0.9, 0.999]"   # a list of numbers: the bytes it always had
    assert rows[1]["optimizer.betas"] == '["flip", "crop"]'


def test_the_aggregate_csv_writes_list_cells_as_json(tmp_path):
    path = write_csv(_Store("data.augment", _VALUES[1:3]), tmp_path / "agg.csv", aggregate=True)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [json.loads(r["data.augment"]) for r in rows] == _VALUES[1:3]


def test_parquet_writes_lists_as_lists_and_mixed_ones_as_the_csv_json(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    same = write_parquet(_Store("optimizer.betas", [[0.9, 0.999], [0.9, 0.95]]), tmp_path / "a.parquet")
    assert pq.read_table(same).column("optimizer.betas").to_pylist() == [[0.9, 0.999], [0.9, 0.95]]
    # items of several types (pyarrow refused the column: ArrowInvalid), and lists beside numbers
    for i, values in enumerate(([[0.9, 0.999], ["flip", "crop"]], [[0.9, 0.999], 0.5, "adam"])):
        path = write_parquet(_Store("k", values), tmp_path / f"m{i}.parquet")
        read = pq.read_table(path).column("k").to_pylist()
        assert [json.loads(v) if isinstance(v, str) and v[:1] == "[" else v for v in read] == \
            [v if isinstance(v, list) else str(v) for v in values]


def test_parquet_writes_a_list_beside_a_string_as_the_csvs_json(tmp_path):
    # (mutation pass 23) a column of a list and a string: each list as its JSON text (str gave
    # "[True, None]", which no JSON reader takes)
    pq = pytest.importorskip("pyarrow.parquet")
    path = write_parquet(_Store("k", [[True, None], {"name": "adam"}, "adam"]), tmp_path / "s.parquet")
    assert pq.read_table(path).column("k").to_pylist() == ["[true, null]", '{"name": "adam"}', "adam"]


def test_parquet_writes_a_column_of_ints_and_floats_as_floats_whatever_the_ints_size(tmp_path):
    # (mutation pass 23) ints beside floats are written as float(v), as Python rounds them: pyarrow's
    # own conversion refuses an int past 2**53 (ArrowInvalid: not exactly representable)
    pq = pytest.importorskip("pyarrow.parquet")
    path = write_parquet(_Store("k", [2 ** 53 + 1, 0.5, None]), tmp_path / "n.parquet")
    assert pq.read_table(path).column("k").to_pylist() == [float(2 ** 53 + 1), 0.5, None] == [2.0 ** 53, 0.5, None]
