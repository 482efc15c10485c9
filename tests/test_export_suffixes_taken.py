"""The suffixes ``catapult export`` writes (mutation pass 14): ``.csv`` and ``.txt`` are CSV,
``.parquet`` and ``.pq`` parquet, in any case (the refusal of other suffixes is held in
test_cli_errors; the suffixes it takes were not). Truth: the file read back as CSV / parquet."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from catapult import cli

STORE = Path(__file__).parent / "data" / "store_v0.1.0.db"   # 12 cells


@pytest.mark.parametrize("name", ["cells.txt", "cells.CSV", "cells.Txt"])
def test_csv_suffixes_in_any_case_write_csv(tmp_path, name):
    store = tmp_path / "s.db"
    store.write_bytes(STORE.read_bytes())
    assert cli.main(["export", str(store), "--out", str(tmp_path / name)]) == 0
    with open(tmp_path / name, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and "status" in rows[0]


@pytest.mark.parametrize("name", ["cells.pq", "cells.PARQUET"])
def test_parquet_suffixes_in_any_case_write_parquet(tmp_path, name):
    pq = pytest.importorskip("pyarrow.parquet")
    store = tmp_path / "s.db"
    store.write_bytes(STORE.read_bytes())
    assert cli.main(["export", str(store), "--out", str(tmp_path / name)]) == 0
    table = pq.read_table(tmp_path / name)
    assert table.num_rows == 12 and "status" in table.column_names
