"""Which files are catapult stores, and how to open one without changing anything else.

A store marks itself with SQLite's ``PRAGMA application_id`` = :data:`APPLICATION_ID` (the
4 bytes at offset 68 of the file header). :func:`identify` reads them through a read-only,
``immutable`` SQLite connection, so deciding that a file is *not* a store cannot change it:
another program's SQLite file, a 0-byte file or any other file is refused and left
byte-for-byte as it was.

A store written by catapult 0.1.0 has application_id 0; it is recognised by its tables
(``meta`` with a ``schema_version`` row, ``cells``, ``metrics``), read through an
``immutable`` connection that creates no ``-wal``/``-shm`` files. Opened for writing it is
upgraded in place (the application_id is set; see :class:`catapult.sweep.store.Store`).

Readers (:func:`connect_readonly`) never write and never set the journal mode, and create or
change no file beside the store: with no writer connected (no ``-wal`` file) they read the main
file ``immutable``; beside a running writer they read through its WAL index without writing to it
(``readonly_shm``); a ``-wal`` left without its ``-shm`` is read from a private copy, so its
commits are seen. An ``immutable`` reader checks the store's files around every query and
reopens when a writer has changed them since.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from urllib.parse import quote

from catapult.sweep.store_raw import open_in_this_process, opening, shm_path, wal_path, wal_unmatched
from catapult.sweep.store_schema import ADDED_COLUMNS, STORE_COLUMNS
from catapult.writing import link_new

__all__ = ["APPLICATION_ID", "SQLITE_MAGIC", "identify", "has_sqlite_header", "missing_columns", "missing_added_columns", "connect_readonly", "ReadOnlyConnection",
           "create_store_file", "sqlite_damage"]

#: ``PRAGMA application_id`` of every catapult store: the ASCII bytes ``"CtPt"``.
APPLICATION_ID = 0x43745074
#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
_LEGACY_TABLES = {"meta", "cells", "metrics"}
def missing_columns(conn: sqlite3.Connection) -> list[str]:
    """``table.column`` for each of :data:`~catapult.sweep.store_schema.STORE_COLUMNS` that a table of ``conn``'s database
    lacks (a table that is not there at all is not counted: the caller checks the tables).

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE cells (id INTEGER)")
    >>> missing = missing_columns(conn)
    >>> "cells.id" in missing, "cells.status" in missing, any(m.startswith("metrics.") for m in missing)
    (False, True, False)
    """
    missing = []
    for table, columns in STORE_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        missing += [f"{table}.{column}" for column in columns if present and column not in present]
    return missing


def missing_added_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """``(table, column, SQL type)`` for each of :data:`~catapult.sweep.store_schema.ADDED_COLUMNS`
    that a table of ``conn``'s database lacks (a store written before the column; a table that is
    not there at all is not counted). A store opened for writing adds them.

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE lambda0 (key TEXT PRIMARY KEY, value REAL, inputs_json TEXT, measured_at REAL)")
    >>> missing_added_columns(conn)
    [('lambda0', 'converged', 'INTEGER')]
    """
    missing = []
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        missing += [(table, column, kind) for column, kind in columns if present and column not in present]
    return missing


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    # the name's bytes, percent-encoded: a name that is not UTF-8 (a byte 0xff) raised UnicodeEncodeError
    return f"file:{quote(os.fsencode(path.resolve()))}?{query}"


def _header_application_id(path: Path) -> int | None:
    """The application_id in the file header (big-endian uint32 at byte 68), or ``None`` when
    the file is not an SQLite 3 database (shorter than its 100-byte header, another magic, or
    not a regular file: opening a FIFO would wait for a writer).

    Read through SQLite (``immutable``, read-only: nothing is written), not with ``open()``:
    closing a descriptor of a file drops every POSIX lock this process holds on it, SQLite's
    included, and SQLite defers closing its own while others of the process hold locks. A
    header read with ``open()`` while a driver of this process had the store open let another
    driver's close take the store as unused and delete the ``-wal`` under the live writer; a
    third driver then made it "database disk image is malformed"."""
    if not path.is_file() or path.stat().st_size < 100:
        return None
    try:
        conn = sqlite3.connect(_uri(path, mode="ro", immutable="1"), uri=True)
        try:
            return conn.execute("PRAGMA application_id").fetchone()[0] & 0xFFFFFFFF
        finally:
            conn.close()
    except sqlite3.DatabaseError:  # "file is not a database": another magic
        return None


def has_sqlite_header(path: str | Path) -> bool:
    """Whether ``path`` is a regular file that starts with :data:`SQLITE_MAGIC` (a store, this one or
    another). Read with ``open()`` only where this process holds no descriptor of the file (closing
    one drops every POSIX lock of the process on it: ``export s.db --out s.db`` in a notebook beside
    its sweep left the driver without its main-file lock), else through SQLite (readable or damaged)

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> create_store_file(folder / "s.db", "CREATE TABLE cells (id INTEGER)")
    True
    >>> _ = (folder / "notes.txt").write_text("not a database")
    >>> has_sqlite_header(folder / "s.db"), has_sqlite_header(folder / "notes.txt")
    (True, False)
    """
    path = Path(path)
    if not path.is_file():  # a FIFO: open() would wait for a writer
        return False
    with opening():
        if not open_in_this_process(path):
            try:
                with open(path, "rb") as fh:
                    return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
            except OSError:  # not ours to read: nothing of it is overwritten by this check
                return False
    return _header_application_id(path) is not None or sqlite_damage(path) is not None


def sqlite_damage(path: str | Path) -> str | None:
    """SQLite's words where ``path`` holds an SQLite 3 header but SQLite cannot read the file
    (``SQLITE_CORRUPT``: a store cut short by a copy or a full disk, a damaged page 1), else
    None: a readable database, or not an SQLite file at all. Read-only, ``immutable``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "s.db"
    >>> create_store_file(path, "CREATE TABLE cells (id INTEGER)")
    True
    >>> sqlite_damage(path) is None
    True
    >>> _ = path.write_bytes(path.read_bytes()[:2000])   # cut inside its first page
    >>> identify(path), sqlite_damage(path)
    ('foreign', 'database disk image is malformed')
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size < 100:
        return None
    try:
        conn = sqlite3.connect(_uri(path, mode="ro", immutable="1"), uri=True)
        try:
            conn.execute("PRAGMA application_id").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        if getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_CORRUPT:
            return str(err)
    return None


def _is_legacy_store(path: Path) -> bool:
    """A catapult 0.1.0 store: application_id 0 and the meta/cells/metrics tables with a
    ``schema_version`` in meta. Read immutably (no -wal/-shm created) unless a -wal file
    exists, whose committed pages only a WAL-aware read sees."""
    try:
        conn = connect_readonly(path)
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
    Never writes to ``path``.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "notes.txt").write_text("not a database")
    >>> create_store_file(folder / "s.db", "CREATE TABLE cells (id INTEGER)")
    True
    >>> identify(folder / "s.db"), identify(folder / "notes.txt")
    ('store', 'foreign')
    >>> (folder / "notes.txt").read_text()   # left as it was
    'not a database'
    """
    path = Path(path)
    app_id = _header_application_id(path)
    if app_id == APPLICATION_ID:
        return "store"
    if app_id == 0 and _is_legacy_store(path):
        return "legacy"
    return "foreign"


def connect_readonly(path: str | Path, timeout: float = 30.0) -> "ReadOnlyConnection":
    """A read-only connection that creates, and writes to, no file beside the store.

    * No ``-wal`` file beside it: no writer is connected (the last one to close checkpoints
      every commit into the main file and removes the ``-wal``), so the main file is the whole
      store; it is read ``immutable`` -- in WAL mode a ``mode=ro`` reader would otherwise create
      empty ``-wal`` and ``-shm`` files, and leave them, beside a store it did not write.
    * A ``-wal`` and a ``-shm`` file: a writer is running (or was killed), and commits may still
      be in the ``-wal``. The store is read through SQLite's WAL index opened read-only
      (``readonly_shm``): a plain ``mode=ro`` reader writes its read marks into the writer's
      ``-shm`` (and rebuilds it after a killed writer); this one reads the index, or rebuilds it
      in its own memory when no writer holds it, and changes neither file.
    * A ``-wal`` without its ``-shm`` (a copied store, a cleaned-up folder): no writer can be
      connected (a writer opens both). The store and its ``-wal`` are copied to a private
      temporary folder and read there, so their commits are seen; nothing beside the store is
      created (a ``mode=ro`` reader would create the ``-shm``, and in a read-only folder could
      only read the main file ``immutable``, without the ``-wal``'s commits).

    The connection (a :class:`ReadOnlyConnection`) stays right while writers come and go: every
    query checks the store's files before and after its rows are read, and reopens as above
    when they changed.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "s.db"
    >>> writer = sqlite3.connect(path, isolation_level=None)
    >>> _ = writer.execute("PRAGMA journal_mode=WAL")
    >>> _ = writer.execute("CREATE TABLE t (x)"); _ = writer.execute("INSERT INTO t VALUES (7)")
    >>> sorted(p.name for p in path.parent.iterdir())    # a writer is connected
    ['s.db', 's.db-shm', 's.db-wal']
    >>> reader = connect_readonly(path)
    >>> reader.execute("SELECT x FROM t").fetchall()     # the commit still in the -wal
    [(7,)]
    >>> reader.close(); writer.close()                   # the last connection checkpoints, removes the -wal
    >>> sorted(p.name for p in path.parent.iterdir())
    ['s.db']
    >>> reader = connect_readonly(path)
    >>> reader.execute("SELECT COUNT(*) FROM t").fetchone()
    (1,)
    >>> sorted(p.name for p in path.parent.iterdir())    # no -wal or -shm made beside it
    ['s.db']
    >>> reader.close()
    """
    return ReadOnlyConnection(Path(path), timeout)


def drop_live_readers(path: str | Path) -> None:
    """Close this process's readers of ``path``'s WAL index (each reopens at its next query) before a
    writer of this process opens it, under :func:`opening`: SQLite shares one index per file and
    process, and one a reader opened read-only refused the writer ("attempt to write a readonly database")."""
    real = os.path.realpath(path)
    for reader in list(_READERS):
        if reader._live and os.path.realpath(reader._source) == real:
            reader._drop()


def _open_reader(path: Path, timeout: float) -> tuple[sqlite3.Connection, bool, tuple]:
    """The connection :func:`connect_readonly` describes, whether it follows a live WAL index,
    and the key of the files it reads (:func:`_identity` when live, else :func:`_state`)."""
    with opening():   # what is read with open() below, and the connection's opening
        return _open_reader_locked(path, timeout)


def _open_reader_locked(path: Path, timeout: float) -> tuple[sqlite3.Connection, bool, tuple]:
    state = _state(path)
    if state[1] is None:  # no -wal
        return _opened(_uri(path, mode="ro", immutable="1"), timeout), False, state
    if shm_path(path).exists():
        if wal_unmatched(path):
            # a -wal whose header the -shm's index does not describe (a damaged -wal): SQLite
            # answers SQLITE_PROTOCOL only after ~10 s of its own retries; read it as it recovers it
            return _connect_copy(path, timeout, beside_shm=True)
        for attempt in range(100):
            key = _identity(path)
            try:
                return _opened(_uri(path, mode="ro", readonly_shm="1"), timeout), True, key
            except sqlite3.OperationalError as err:
                if not (wal_path(path).exists() and shm_path(path).exists()):
                    return _open_reader(path, timeout)  # the writer closed meanwhile: -wal merged
                if "locking protocol" in str(err):
                    # SQLITE_PROTOCOL after SQLite's own retries: a -wal that does not match the
                    # -shm left beside it (a damaged -wal); read as SQLite recovers it, from a copy
                    return _connect_copy(path, timeout, beside_shm=True)
                if "readonly database" not in str(err) or attempt == 99:
                    raise
                time.sleep(0.001 * min(attempt + 1, 20))  # refused while the writer restarts its -wal
    return _connect_copy(path, timeout)


def _opened(uri: str, timeout: float) -> sqlite3.Connection:
    # any thread may close it (ReadOnlyConnection._reopen); each is used by one reader
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the file is open and readable
    except BaseException:
        conn.close()
        raise
    return conn


class _Rows:
    """A query's rows, read to the end (what :meth:`ReadOnlyConnection.execute` returns). They
    are kept as plain tuples and made rows of the reader's ``row_factory`` one at a time as
    they are taken: a list of :class:`sqlite3.Row` objects, which the garbage collector
    tracks, made reading all of a store's metrics ~1.6x slower."""

    def __init__(self, rows: list, cursor: sqlite3.Cursor, row_factory) -> None:
        self._rows, self._next, self._cursor, self._factory = rows, 0, cursor, row_factory
        self.description = cursor.description

    def _made(self, values: tuple):
        return values if self._factory is None else self._factory(self._cursor, values)

    def fetchone(self):
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._made(self._rows[self._next - 1])

    def fetchall(self) -> list:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return list(map(self._made, rest))

    def __iter__(self):
        # itself, as an sqlite3 cursor is: a loop left early (break) leaves the rest to a later
        # fetchone / fetchall / loop (a fresh iterator of all the rest lost them: [] after one next())
        return self

    def __next__(self):
        if (row := self.fetchone()) is None:
            raise StopIteration
        return row


#: The open readers of this process (a live one is closed when any of them sees its files replaced).
_READERS: "weakref.WeakSet[ReadOnlyConnection]" = weakref.WeakSet()


class ReadOnlyConnection:
    """A store read by :func:`connect_readonly`: ``execute``, ``row_factory``, ``close`` as on a
    :class:`sqlite3.Connection` (other attributes are the current connection's), and right
    while writers come and go.

    * An ``immutable`` read (a store with no ``-wal`` when opened, or a private copy) is right
      only while the store is as it was. A writer may start after the reader opened (a
      notebook holding a ``Store(create=False)`` while a sweep runs): its checkpoints rewrite
      the main file under a reader that takes no locks, which then read its cached old pages
      (stale results) or old and new pages mixed ("database disk image is malformed"). Key:
      inode, size, mtime and ctime of the main file and the ``-wal``.
    * A ``readonly_shm`` read follows the writer's commits, but not files replaced under it:
      the last writer to close deletes the ``-wal`` and ``-shm``, the next makes new ones, and
      a reader still holding the old ones read stale results -- as did a new connection in the
      same process while any old one was open (SQLite shares one WAL index per file and
      process). Key: the inodes of the main file, ``-wal`` and ``-shm``; on a change every live
      reader of the file in this process is closed (each reopens at its next query). A reader
      of a read-only WAL index also cannot wait on its locks, so while the writer restarts its
      ``-wal`` a read can be refused ("attempt to write a readonly database"; measured: 2 of
      40,000 reads beside a writer checkpointing every 50 commits); such a read has returned
      no row (the refusal comes as its read transaction begins) and is tried again.

    Every query checks the key before and after its rows are read, and reopens on a change.

    >>> import tempfile
    >>> from catapult.sweep.store import Store
    >>> path = Path(tempfile.mkdtemp()) / "s.db"
    >>> Store(path).close()
    >>> reader = connect_readonly(path)
    >>> reader.execute("SELECT COUNT(*) FROM cells").fetchone()   # a new store: no cells yet
    (0,)
    >>> reader.close()
    """

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self._source, self._timeout, self._conn = Path(path), timeout, None
        self.row_factory = None
        # held while a query runs on the connection and while it is dropped: another thread (a
        # writer of this process, drop_live_readers) closing it mid-query crashed the process
        # (SIGSEGV in sqlite3; 6-9 of 30 runs of test_store_same_process's driver-meanwhile case)
        self._lock = threading.RLock()
        self._open()
        _READERS.add(self)

    def _open(self) -> None:
        self._conn, self._live, self._key = _open_reader(self._source, self._timeout)

    def _now(self) -> tuple:
        return _identity(self._source) if self._live else _state(self._source)

    def _drop(self) -> None:
        with self._lock:   # never under a query of another thread
            conn, self._conn = self._conn, None   # another thread may drop it too (a writer of this process)
            if conn is not None:
                conn.close()

    def _reopen(self) -> None:
        real = os.path.realpath(self._source)
        for reader in list(_READERS):  # no connection of this process may hold the old index
            if reader is not self and reader._conn is not None and reader._live \
                    and os.path.realpath(reader._source) == real:
                reader._drop()  # (another thread's too: it reopens at its next query)
        self._drop()
        self._open()

    def _rows(self, conn: sqlite3.Connection, sql, parameters):
        for attempt in range(100):
            with self._lock:
                if self._conn is not conn:   # dropped by another thread since: execute reads again
                    raise sqlite3.ProgrammingError("the reader's connection was dropped meanwhile")
                try:
                    cursor = conn.execute(sql, parameters)
                    return cursor.fetchall(), cursor
                except sqlite3.OperationalError as err:
                    if not self._live or "readonly database" not in str(err) or attempt == 99:
                        raise
            time.sleep(0.001 * min(attempt + 1, 20))

    def execute(self, sql: str, parameters=()) -> _Rows:
        """``sql`` run on the store as it is now; its rows are read at once."""
        for _ in range(5):
            if self._conn is None or self._now() != self._key:
                self._reopen()
            conn = self._conn
            if conn is None:  # dropped meanwhile by another thread (drop_live_readers, a reopen): again
                continue
            try:
                rows, cursor = self._rows(conn, sql, parameters)  # plain tuples (row_factory None)
            except sqlite3.ProgrammingError:
                if self._conn is conn:
                    raise
                continue  # closed by another thread's reopen meanwhile: read again
            if self._now() == self._key:  # no file was rewritten or replaced while it was read
                return _Rows(rows, cursor, self.row_factory)
        raise sqlite3.OperationalError(f"{self._source} kept changing while it was read; try again")

    def close(self) -> None:
        """Close the connection (a second call does nothing)."""
        self._drop()
        _READERS.discard(self)

    def __getattr__(self, name: str):
        if self._conn is None:
            self._reopen()
        return getattr(self._conn, name)


def _state(path: Path) -> tuple:
    """What tells a store's files changed: the main file's and the ``-wal``'s stamps."""
    real = Path(os.path.realpath(path))
    return _stamp(real), _stamp(wal_path(real))


def _identity(path: Path) -> tuple:
    """Which files a live reader has open: the inodes of the main file, ``-wal`` and ``-shm``."""
    stamps = (_stamp(Path(os.path.realpath(path))), _stamp(wal_path(path)), _stamp(shm_path(path)))
    return tuple(stamp[0] if stamp else None for stamp in stamps)


def _stamp(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _connect_copy(path: Path, timeout: float, beside_shm: bool = False) -> tuple[sqlite3.Connection, bool, tuple]:
    """The store and its ``-wal`` (no ``-shm``: no writer) read from a private copy: merged into
    one file in a temporary folder, opened ``immutable`` and unlinked (where the system allows
    an open file to be; elsewhere the folder is left in the temporary directory). Refused where a
    connection of this process holds the store's ``-shm`` or ``-wal``, whose locks the copy would drop."""
    real = Path(os.path.realpath(path))
    shm = shm_path(real)
    with opening():
        if open_in_this_process(shm, wal_path(real), unknown=False):
            raise sqlite3.OperationalError(
                f"{path} is read from a copy here (its -wal has no -shm, or one that does not match it: a "
                f"damaged -wal), and a connection of this process has the store's -wal or -shm open, whose "
                f"locks closing the copied files would drop: close it, or read the store from another process")
        return _connect_copy_locked(path, real, shm, timeout, beside_shm)


def _connect_copy_locked(path: Path, real: Path, shm: Path, timeout: float, beside_shm: bool):
    for _ in range(5):
        before = _state(real)
        folder = Path(tempfile.mkdtemp(prefix="catapult-store-"))
        copy = folder / "store.db"
        try:
            shutil.copyfile(real, copy)
            if before[1] is not None:
                shutil.copyfile(wal_path(real), f"{copy}-wal")
        except FileNotFoundError:  # the -wal was merged and removed meanwhile
            shutil.rmtree(folder, ignore_errors=True)
            return _open_reader(path, timeout)
        if _state(real) != before or (shm.exists() and not beside_shm):  # a writer came: again
            shutil.rmtree(folder, ignore_errors=True)
            if shm.exists() and not beside_shm:
                return _open_reader(path, timeout)
            continue
        try:
            merge = sqlite3.connect(str(copy), isolation_level=None)
            try:
                merge.execute("PRAGMA journal_mode=DELETE")  # the copy's -wal into its main file
            finally:
                merge.close()
            conn = _opened(_uri(copy, mode="ro", immutable="1"), timeout)  # the store as copied
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)  # an open file is read to its end after unlink
        return conn, False, before
    raise sqlite3.OperationalError(f"{path} changed while it was being read; try again")


def create_store_file(path: str | Path, ddl: str) -> bool:
    """Create a new, empty store at ``path`` atomically: built under a temporary name (its
    application_id, WAL journal, tables) and hard-linked into place, so another process never
    sees a half-made store. Returns False when ``path`` appeared meanwhile (left as it is).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "s.db"
    >>> create_store_file(path, "CREATE TABLE cells (id INTEGER)")
    True
    >>> header = path.read_bytes()[:100]                 # SQLite's file header
    >>> header[:16] == SQLITE_MAGIC, int.from_bytes(header[68:72], "big") == APPLICATION_ID
    (True, True)
    >>> create_store_file(path, "CREATE TABLE other (x)")  # there already: left as it is
    False
    >>> sorted(p.name for p in path.parent.iterdir())
    ['s.db']
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(f"BEGIN; {ddl}; COMMIT;")
            # everything into the main file, or an error: close() checkpoints too, but says nothing where
            # that fails (a full disk), and the WAL removed below held the tables: a header-only store was
            # linked into place, then refused as damaged ("perhaps ... a full disk ... left it unchanged")
            if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                raise sqlite3.OperationalError(f"the new store {path} could not be checkpointed (busy)")
        finally:
            conn.close()
        return link_new(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            try:
                leftover.unlink()
            except OSError:  # not there (a read-only folder: never made); the error above counts
                pass
