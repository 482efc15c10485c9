"""Reading a store's files with ``open()`` without dropping this process's SQLite locks.

POSIX locks belong to a process, not to a descriptor: closing *any* descriptor of a file drops
every lock the process holds on it, SQLite's included. A reader that ``open()``s a store's
``-shm`` or ``-wal`` (the damaged ``-wal`` check) in the process whose driver holds them would
leave the driver without its locks, and another process would then take itself for the first
user of the store. So such reads happen only where this process holds no descriptor of the files,
and under one lock (:func:`opening`) that catapult's own connections also take while they open.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

__all__ = ["wal_path", "shm_path", "opening", "open_in_this_process", "wal_unmatched"]


def wal_path(path: Path) -> Path:
    """The store's ``-wal`` file: SQLite names it after the file a symbolic link points to, so a
    store reached through a link is read with its uncommitted-to-main pages too.

    >>> wal_path(Path("runs/sweep.db")).name
    'sweep.db-wal'
    """
    return Path(f"{os.path.realpath(path)}-wal")


def shm_path(path: Path) -> Path:
    """The store's ``-shm`` file (SQLite's WAL index), named as :func:`wal_path` names the ``-wal``.

    >>> shm_path(Path("runs/sweep.db")).name
    'sweep.db-shm'
    """
    return Path(f"{os.path.realpath(path)}-shm")


#: Held while this process reads a store's files with ``open()`` (whose close drops every POSIX lock
#: of the process on the file) and while a connection of catapult's opens a store (:func:`opening`).
_RAW_READS = threading.RLock()


def opening():
    """The lock a connection of catapult's opens a store under, up to its first query: readers of
    this process never ``open()`` the store's files meanwhile (a driver thread lost its ``-shm`` lock).
    Re-entrant, so a reader already holding it may open a connection.

    >>> with opening(), opening():
    ...     pass
    """
    return _RAW_READS


_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


def open_in_this_process(*paths: Path, unknown: bool = True) -> bool:
    """Whether this process has a descriptor open on any of ``paths`` (``unknown`` where it cannot
    tell: no ``/proc/self/fd``).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "store.db"
    >>> _ = path.write_bytes(b"")
    >>> with open(path, "rb"):
    ...     open_in_this_process(path)
    True
    >>> open_in_this_process(path, Path("absent"))   # closed again; a missing file is open nowhere
    False
    """
    try:
        wanted = {os.stat(p)[1:3] for p in paths if p.exists()}   # (inode, device)
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.stat(f"/proc/self/fd/{fd}")[1:3] in wanted:
                    return True
            except OSError:   # closed since the listing
                continue
    except OSError:
        return unknown
    return False


def wal_unmatched(path: Path, looks: int = 3) -> bool:
    """Whether the ``-shm`` beside ``path`` indexes frames of a ``-wal`` other than the one there
    (its header not a WAL header, or salts other than those the index copied from it), on
    ``looks`` reads 5 ms apart: a writer restarting its ``-wal`` writes the header first and the
    index after it, so one read can see them apart. A false answer costs nothing (the readonly_shm
    open is tried); a true one a private copy, read as SQLite recovers it.

    Read with ``open()`` only where this process holds no descriptor of either file (Linux's
    ``/proc/self/fd``; elsewhere not read): closing one drops every POSIX lock of the process on
    the file, and a driver of this process holds its ``-shm`` read lock, without which another
    process opening the store takes itself for the first and rebuilds the index under it (the
    reason :func:`_header_application_id` reads through SQLite). Under :data:`_RAW_READS`, so
    that no connection of catapult's in this process opens the store meanwhile.

    >>> import sqlite3, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "store.db"
    >>> con = sqlite3.connect(path)
    >>> _ = con.execute("PRAGMA journal_mode=wal"), con.execute("CREATE TABLE t(x)"), con.commit()
    >>> wal_unmatched(path)      # this process holds the files open: not read, so no
    False
    >>> con.close()
    """
    with _RAW_READS:
        return _wal_unmatched_locked(path, looks)


def _wal_unmatched_locked(path: Path, looks: int) -> bool:
    if open_in_this_process(shm_path(path), wal_path(path)):
        return False
    for look in range(looks):
        if look:
            time.sleep(0.005)
        try:
            with open(shm_path(path), "rb") as f:
                index = f.read(48)
            with open(wal_path(path), "rb") as f:
                header = f.read(32)
        except OSError:
            return False
        # the index header (native byte order): isInit at 12, mxFrame at 16, the salts at 32
        if len(index) < 48 or index[12] != 1 or int.from_bytes(index[16:20], sys.byteorder) == 0:
            return False
        if len(header) == 32 and header[:4] in _WAL_MAGIC and header[16:24] == index[32:40]:
            return False
    return True
