"""Mutation pass 12 (sweep.store_raw): a store reached through a symbolic link has its -wal and
-shm beside the file the link points to (truth: the files SQLite itself makes in WAL mode), and
open_in_this_process answers for any of its paths, one of them missing or not."""
from __future__ import annotations

import sqlite3

from catapult.sweep.store_raw import open_in_this_process, shm_path, wal_path


def test_the_wal_and_shm_of_a_store_behind_a_link_are_the_linked_files(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "s.db"
    link = tmp_path / "link.db"
    link.symlink_to(target)
    conn = sqlite3.connect(str(link), isolation_level=None)   # SQLite opens the link's target
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
        made = sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink())
        assert made == ["s.db", "s.db-shm", "s.db-wal"]          # beside the target, none beside the link
        assert wal_path(link) == wal_path(target) and wal_path(link).exists()
        assert shm_path(link) == shm_path(target) and shm_path(link).exists()
        assert open_in_this_process(wal_path(link), shm_path(link))   # this connection's descriptors
    finally:
        conn.close()


def test_a_missing_path_does_not_hide_a_held_one(tmp_path):
    # any of the paths: a -shm not there (a -wal left without one) says nothing about the -wal
    held, missing = tmp_path / "s.db-wal", tmp_path / "s.db-shm"
    held.write_bytes(b"")
    with open(held, "rb"):
        assert open_in_this_process(missing, held, unknown=False)
        assert open_in_this_process(held, missing, unknown=False)
    assert not open_in_this_process(missing, held, unknown=False)
