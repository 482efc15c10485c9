"""A store opened for writing on a full disk: SQLite cannot grow the -shm file beside it and says
"disk I/O error" at the first statement (on a 200 KiB tmpfs with 20 KiB free, even a SELECT). The
store was refused as "not a usable catapult sweep store", which reads as damaged, and the message
named neither the disk nor the free space; a write that filled the disk mid-sweep said "the store
cannot be written" without naming the store. The store, whole, is named as such now."""
from __future__ import annotations

import sqlite3
from collections import namedtuple

import pytest

from catapult.cli import main
from catapult.sweep import store as store_module
from catapult.sweep.store import Store, StoreError
from tiny_run import two_cell_grid


class _NoRoomForTheShm:
    """A writer's connection on a full disk: every statement fails as SQLite's do there."""

    def execute(self, *args):
        raise sqlite3.OperationalError("disk I/O error")

    def close(self):
        pass


@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    Store(tmp_path / "s.db").close()   # a whole, empty store, made while the disk had room
    real = sqlite3.connect

    def connect(database, *args, **kwargs):
        return _NoRoomForTheShm() if kwargs.get("timeout") == 30.0 else real(database, *args, **kwargs)

    monkeypatch.setattr(store_module.sqlite3, "connect", connect)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda folder: usage(204800, 184320, 20480))
    return tmp_path / "s.db"


def test_a_store_on_a_full_disk_is_named_whole_with_the_room_left(full_disk):
    before = full_disk.read_bytes()
    with pytest.raises(StoreError) as err:
        Store(full_disk)
    words = str(err.value)
    assert "not a usable" not in words and "SQLite says: disk I/O error" in words
    assert "the disk holding it has 20 KiB free" in words and "the store is as it was" in words
    assert full_disk.read_bytes() == before


def test_the_sweep_says_so_in_one_line(full_disk, tmp_path, capsys):
    config = tmp_path / "grid.yaml"
    config.write_text(two_cell_grid())
    assert main(["sweep", str(config), "--store", str(full_disk), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{full_disk} could not be opened for writing (SQLite says: disk I/O error; the disk holding it" in err
