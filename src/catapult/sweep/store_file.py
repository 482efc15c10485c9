"""Which files are catapult stores, and how to open one without changing anything else.

A store marks itself with SQLite's ``PRAGMA application_id`` = :data:`APPLICATION_ID` (the
4 bytes at offset 68 of the file header). :func:`identify` reads those header bytes straight
from the file, so deciding that a file is *not* a store never opens it with SQLite and
cannot change it: another program's SQLite file, a 0-byte file or any other file is refused
and left byte-for-byte as it was.

A store written by catapult 0.1.0 has application_id 0; it is recognised by its tables
(``meta`` with a ``schema_version`` row, ``cells``, ``metrics``), read through an
``immutable`` connection that creates no ``-wal``/``-shm`` files. Opened for writing it is
upgraded in place (the application_id is set; see :class:`catapult.sweep.store.Store`).

Readers (:func:`connect_readonly`) never write and never set the journal mode, and create no
``-wal``/``-shm`` files: with no writer connected (no ``-wal`` file) they read the main file
``immutable``; beside a running writer they read ``mode=ro`` through its WAL index. A store in a
directory the reader cannot write is read ``immutable``: the committed state at that moment.
"""
from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import quote

from catapult.sweep.store_schema import STORE_COLUMNS

__all__ = ["APPLICATION_ID", "SQLITE_MAGIC", "identify", "missing_columns", "connect_readonly",
           "create_store_file"]

#: ``PRAGMA application_id`` of every catapult store: the ASCII bytes ``"CtPt"``.
APPLICATION_ID = 0x43745074
#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
_LEGACY_TABLES = {"meta", "cells", "metrics"}
def missing_columns(conn: sqlite3.Connection) -> list[str]:
    """``table.column`` for each of :data:`~catapult.sweep.store_schema.STORE_COLUMNS` that a table of ``conn``'s database
    lacks (a table that is not there at all is not counted: the caller checks the tables)."""
    missing = []
    for table, columns in STORE_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        missing += [f"{table}.{column}" for column in columns if present and column not in present]
    return missing


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(str(path.resolve()))}?{query}"


def _header_application_id(path: Path) -> int | None:
    """The application_id in the file header (big-endian uint32 at byte 68), or ``None`` when
    the file is not an SQLite 3 database (shorter than its 100-byte header, another magic, or
    not a regular file: opening a FIFO would wait for a writer)."""
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return None
    return int.from_bytes(header[68:72], "big")


def _wal(path: Path) -> Path:
    """The store's ``-wal`` file: SQLite names it after the file a symbolic link points to, so a
    store reached through a link is read with its uncommitted-to-main pages too."""
    return Path(f"{os.path.realpath(path)}-wal")


def _is_legacy_store(path: Path) -> bool:
    """A catapult 0.1.0 store: application_id 0 and the meta/cells/metrics tables with a
    ``schema_version`` in meta. Read immutably (no -wal/-shm created) unless a -wal file
    exists, whose committed pages only a WAL-aware read sees."""
    uri = _uri(path, mode="ro") if _wal(path).exists() else _uri(path, mode="ro", immutable="1")
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not _LEGACY_TABLES <= tables or missing_columns(conn):
                return False
            return conn.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is not None
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def identify(path: str | Path) -> str:
    """``"store"`` (application_id is :data:`APPLICATION_ID`), ``"legacy"`` (a catapult 0.1.0
    store, application_id 0), or ``"foreign"`` (anything else, including a 0-byte file).
    Never writes to ``path``."""
    path = Path(path)
    app_id = _header_application_id(path)
    if app_id == APPLICATION_ID:
        return "store"
    if app_id == 0 and _is_legacy_store(path):
        return "legacy"
    return "foreign"


def connect_readonly(path: str | Path, timeout: float = 30.0) -> sqlite3.Connection:
    """A read-only connection that creates no file beside the store.

    * No ``-wal`` file beside it: no writer is connected (the last one to close checkpoints
      every commit into the main file and removes the ``-wal``), so the main file is the whole
      store; it is read ``immutable`` -- in WAL mode a ``mode=ro`` reader would otherwise create
      empty ``-wal`` and ``-shm`` files, and leave them, beside a store it did not write.
    * A ``-wal`` file: a writer is running (or was killed), and commits may still be in it; the
      store is read ``mode=ro`` through SQLite's WAL index, or ``immutable`` where SQLite cannot
      set that index up because the directory is not writable (then no writer runs there).
    """
    path = Path(path)
    if not _wal(path).exists():
        return sqlite3.connect(_uri(path, mode="ro", immutable="1"), uri=True, timeout=timeout,
                               isolation_level=None)
    conn = sqlite3.connect(_uri(path, mode="ro"), uri=True, timeout=timeout, isolation_level=None)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        conn = sqlite3.connect(_uri(path, mode="ro", immutable="1"), uri=True, timeout=timeout,
                               isolation_level=None)
    return conn


def create_store_file(path: str | Path, ddl: str) -> bool:
    """Create a new, empty store at ``path`` atomically: built under a temporary name (its
    application_id, WAL journal, tables) and hard-linked into place, so another process never
    sees a half-made store. Returns False when ``path`` appeared meanwhile (left as it is)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(f"BEGIN; {ddl}; COMMIT;")
        finally:
            conn.close()  # the last connection checkpoints: everything is in the main file
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
