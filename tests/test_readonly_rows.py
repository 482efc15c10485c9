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


def test_a_reader_dropped_by_another_thread_after_its_reopen_reads_again(tmp_path, monkeypatch):
    """A writer of this process closes its live readers (``drop_live_readers``) from its own thread;
    one that lands between a reader's reopen and its query left the query a None connection
    (AttributeError, ~1 run in 2 of test_store_same_process under load). The drop is made to land
    there; the truth is the new store's zero cells."""
    from catapult.sweep.store import Store
    from catapult.sweep.store_file import ReadOnlyConnection

    path = tmp_path / "s.db"
    Store(path).close()
    reader = connect_readonly(path)
    real_reopen, drops = ReadOnlyConnection._reopen, []

    def reopen_then_dropped(self):
        real_reopen(self)
        if not drops:
            drops.append(self)
            self._drop()   # what the writer's thread does at this moment
    monkeypatch.setattr(ReadOnlyConnection, "_reopen", reopen_then_dropped)
    reader._drop()
    try:
        assert reader.execute("SELECT COUNT(*) FROM cells").fetchone() == (0,)
        assert drops == [reader]
    finally:
        reader.close()
