"""The damaged ``-wal`` check of the store readers (``store_raw.wal_unmatched``, stop 53), on real
SQLite files: the ``-wal`` and ``-shm`` a writer leaves (copied while it is connected, as a killed
one leaves them), healthy or damaged in one field of the WAL header. Truth: SQLite's own reading
of the same files, a fresh connection that recovers the ``-wal`` from its header and frames, and
the file format (a ``-wal`` that a checkpoint truncated indexes no frames). Mutation pass 10."""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from catapult.sweep import store_file
from catapult.sweep.store_file import connect_readonly
from catapult.sweep.store_raw import wal_unmatched

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="the check reads only on Linux")


def _left_by_a_writer(folder: Path, *, truncate: bool = False) -> Path:
    """A WAL database whose last commit (x = 2) is in its ``-wal`` only (none with ``truncate``: its
    ``-wal`` emptied by a checkpoint), copied beside its ``-shm``."""
    live = folder / "live"
    live.mkdir()
    writer = sqlite3.connect(live / "s.db", isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # the table and x = 1 in the main file
    if not truncate:
        writer.execute("UPDATE t SET x = 2")
    out = folder / "copy"
    out.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{live / 's.db'}{suffix}", out / f"s.db{suffix}")
    writer.close()
    return out / "s.db"


def _recovered(path: Path, tmp: Path) -> list:
    """What SQLite itself reads from these files: a copy opened by a first connection, which
    rebuilds the index from the ``-wal``."""
    tmp.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{path}{suffix}", tmp / f"s.db{suffix}")
    conn = sqlite3.connect(tmp / "s.db")
    try:
        return conn.execute("SELECT x FROM t").fetchall()
    finally:
        conn.close()


def _read(path: Path) -> list:
    reader = connect_readonly(path)
    try:
        return reader.execute("SELECT x FROM t").fetchall()
    finally:
        reader.close()


def test_a_healthy_wal_and_one_a_checkpoint_truncated_are_not_damaged(tmp_path):
    (tmp_path / "a").mkdir()
    healthy = _left_by_a_writer(tmp_path / "a")
    assert wal_unmatched(healthy) is False
    assert _read(healthy) == _recovered(healthy, tmp_path / "a-truth") == [(2,)]
    (tmp_path / "b").mkdir()
    emptied = _left_by_a_writer(tmp_path / "b", truncate=True)
    assert Path(f"{emptied}-wal").stat().st_size == 0
    assert wal_unmatched(emptied) is False
    assert _read(emptied) == [(1,)]


@pytest.mark.parametrize("field, span", [("magic", slice(0, 4)), ("salts", slice(16, 24))])
def test_a_wal_header_damaged_in_one_field_is_read_as_sqlite_recovers_it(tmp_path, field, span):
    path = _left_by_a_writer(tmp_path)
    wal = Path(f"{path}-wal")
    data = bytearray(wal.read_bytes())
    data[span] = bytes(b ^ 0xFF for b in data[span])
    wal.write_bytes(bytes(data))
    assert wal_unmatched(path) is True
    truth = _recovered(path, tmp_path / "truth")
    assert truth == [(1,)]   # SQLite drops a -wal whose header is not its own: the commit in it is lost
    assert _read(path) == truth


def test_the_files_are_not_read_where_this_process_holds_one_of_them(tmp_path):
    # closing a descriptor drops every POSIX lock this process holds on the file (a driver's -shm
    # read lock): with either file open here, nothing is read, whatever the files hold
    path = _left_by_a_writer(tmp_path)
    wal = Path(f"{path}-wal")
    wal.write_bytes(os.urandom(wal.stat().st_size))
    assert wal_unmatched(path) is True
    for held in (Path(f"{path}-shm"), wal):
        fd = os.open(held, os.O_RDONLY)
        try:
            assert wal_unmatched(path) is False, held.name
        finally:
            os.close(fd)


def test_where_this_process_cannot_list_its_descriptors_it_reads_nothing(tmp_path, monkeypatch):
    path = _left_by_a_writer(tmp_path)
    Path(f"{path}-wal").write_bytes(b"\0" * 32)
    real = os.listdir

    def listdir(folder="."):
        if str(folder) == "/proc/self/fd":
            raise FileNotFoundError(folder)
        return real(folder)

    monkeypatch.setattr(store_file.os, "listdir", listdir)
    assert wal_unmatched(path) is False


def test_a_wal_gone_meanwhile_is_no_damaged_wal(tmp_path):
    path = _left_by_a_writer(tmp_path)
    Path(f"{path}-wal").unlink()   # (a writer's last close merged and removed it)
    assert wal_unmatched(path) is False


def test_both_wal_magic_numbers_are_sqlites(tmp_path):
    # the file format's magic is 0x377f0682 or 0x377f0683 (checksums in big-endian order, as a
    # big-endian host writes them): a -wal of the latter, its salts those the index copied, is no damaged one
    path = _left_by_a_writer(tmp_path)
    wal = Path(f"{path}-wal")
    data = bytearray(wal.read_bytes())
    assert data[:4] in (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")
    for last in (0x82, 0x83):
        data[3] = last
        wal.write_bytes(bytes(data))
        assert wal_unmatched(path) is False, hex(last)
