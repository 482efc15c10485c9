"""A ReadOnlyConnection's connection is never closed by another thread while a query runs on it
(mutation pass 15; stop 58's fix of a SIGSEGV in sqlite3, 6-9 runs in 30 of test_store_same_process):
a writer's thread asking to drop the reader mid-query waits for the query, which returns its rows.
A stand-in connection holds the query open until the drop was asked and records whether it was
closed while the query ran; the truth is the new store's zero cells."""
from __future__ import annotations

import threading
import time

from catapult.sweep.store import Store
from catapult.sweep.store_file import connect_readonly


class _Watched:
    def __init__(self, real):
        self.real, self.running, self.closed_while_running = real, False, []
        self.started, self.asked = threading.Event(), threading.Event()

    def execute(self, sql, parameters=()):
        self.running = True
        self.started.set()
        self.asked.wait(10)
        time.sleep(0.5)            # room for a drop that does not wait for the query
        try:
            return self.real.execute(sql, parameters)
        finally:
            self.running = False

    def close(self):
        self.closed_while_running.append(self.running)
        self.real.close()


def test_a_drop_from_another_thread_waits_for_the_query_in_flight(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    reader = connect_readonly(path)
    watched = _Watched(reader._conn)
    reader._conn = watched

    def writer():   # what drop_live_readers does from a writer's thread
        watched.started.wait(10)
        watched.asked.set()
        reader._drop()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert reader.execute("SELECT COUNT(*) FROM cells").fetchone() == (0,)
    finally:
        thread.join(10)
        reader.close()
    assert watched.closed_while_running == [False]


def test_a_query_whose_connection_was_dropped_before_it_ran_reads_again(tmp_path, monkeypatch):
    """A drop landing after the query took the connection but before it ran: the query's own check
    refuses that connection, and the read is made again on a new one."""
    from catapult.sweep.store_file import ReadOnlyConnection

    path = tmp_path / "s.db"
    Store(path).close()
    reader = connect_readonly(path)
    real_rows, drops = ReadOnlyConnection._rows, []

    def dropped_first(self, conn, sql, parameters):
        if not drops:
            drops.append(conn)
            self._drop()   # what a writer's thread does at this moment
        return real_rows(self, conn, sql, parameters)
    monkeypatch.setattr(ReadOnlyConnection, "_rows", dropped_first)
    try:
        assert reader.execute("SELECT COUNT(*) FROM cells").fetchone() == (0,)
        assert len(drops) == 1
    finally:
        reader.close()
