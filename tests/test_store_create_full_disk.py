"""A new store on a disk that fills while it is made: the tables go to the temporary file's WAL,
and the checkpoint into the file itself fails. ``close()`` says nothing of that failure, the WAL
was removed with the temporary files, and a header-only store was linked into place: the sweep
was refused as "a damaged SQLite file ... left it unchanged" (a file it had made), and so was
every rerun once the disk had room. Now the error is the disk's and no file is left.

The full disk is played by the temporary file's connection: a checkpoint asked of it fails as
SQLite's does on a full disk, and its close leaves the file as such a close left it on a 200 KiB
tmpfs: the first page written (its header counting the tables' pages), the rest not."""
from __future__ import annotations

import sqlite3

import pytest

from catapult.cli import main
from catapult.sweep import store_file
from catapult.sweep.store import Store
from tiny_run import two_cell_grid


class _FullDisk:
    """A connection to the temporary store file whose checkpoints fail for want of space."""

    def __init__(self, path: str, connect):
        self.path = path
        self.conn = connect(path, isolation_level=None)

    def execute(self, sql, *args):
        if "wal_checkpoint" in sql.lower():
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def executescript(self, sql):
        return self.conn.executescript(sql)

    def close(self):
        self.conn.close()   # its own checkpoint, which wrote the first page before the disk was full:
        with open(self.path, "r+b") as file:   # the header counts the pages the file then lacks
            file.truncate(4096)


@pytest.fixture
def full_disk(monkeypatch):
    real = sqlite3.connect

    def connect(database, *args, **kwargs):
        if str(database).endswith(".tmp"):   # create_store_file's temporary store
            return _FullDisk(str(database), real)
        return real(database, *args, **kwargs)

    monkeypatch.setattr(store_file.sqlite3, "connect", connect)


def test_a_store_made_on_a_full_disk_is_an_error_of_the_disk_and_leaves_no_file(tmp_path, full_disk):
    path = tmp_path / "s.db"
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        Store(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_sweep_says_the_disk_is_full_and_a_rerun_with_room_makes_the_store(tmp_path, capsys, monkeypatch,
                                                                                 full_disk):
    config = tmp_path / "grid.yaml"
    config.write_text(two_cell_grid())
    store = tmp_path / "s.db"
    argv = ["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "database or disk is full" in err and "damaged" not in err and len(err.strip().splitlines()) == 1
    assert not store.exists()
    monkeypatch.undo()   # the disk has room again
    assert main(argv) == 0
    with Store(store, create=False) as done:
        assert [row["status"] for row in done.cells()] == ["finished", "finished"]
