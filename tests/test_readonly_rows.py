"""The rows a ReadOnlyConnection query returns are consumed as an sqlite3 cursor's are: iterating
takes them, so a later fetchone / fetchall sees none left (the truth: sqlite3's own cursor on the
same query)."""
from __future__ import annotations

import sqlite3

from catapult.sweep.store_file import connect_readonly, create_store_file


def test_rows_taken_by_iteration_are_gone_as_from_an_sqlite3_cursor(tmp_path):
    path = tmp_path / "s.db"
    create_store_file(path, "CREATE TABLE cells (id INTEGER)")
    query = "SELECT 1 UNION SELECT 2 UNION SELECT 3"
    plain = sqlite3.connect(path)
    reader = connect_readonly(path)
    try:
        for conn in (plain, reader):
            rows = conn.execute(query)
            assert next(iter(rows)) == (1,)
            assert list(rows) == [(2,), (3,)]
            assert rows.fetchone() is None and rows.fetchall() == [] and list(rows) == []
            rows = conn.execute(query)
            assert rows.fetchone() == (1,) and rows.fetchall() == [(2,), (3,)] and list(rows) == []
    finally:
        plain.close()
        reader.close()
