"""Readers of a sweep store (export, plot, transfer, report, ``sweep --dry-run`` and
``Store(create=False)``) create and change no file beside it -- not the store, not its ``-wal``,
not its ``-shm`` -- whether a writer is running in another process, was killed (its ``-wal``
still holding commits the main file lacks), or left a ``-wal`` without its ``-shm``; and they
read every commit. Checked against the files' bytes and mtimes, with real SQLite files. The
writers are other processes (:mod:`store_writers`: forked from a server that imported the store
once, not a fresh interpreter each)."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from proc_locks import posix_locks

from catapult.cli import main
from catapult.sweep.store import Store

from store_writers import python_child, run_python
from test_store_identity import CONFIG, _store

PROBE = 0.123456789  # a value only the writer's un-merged commit holds

WRITER = """
import os, sys
from catapult.sweep.store import Store
store = Store(sys.argv[1])
store.conn.execute("PRAGMA wal_autocheckpoint = 0")  # keep the commit in the -wal
store.conn.execute("UPDATE cells SET best_test_accuracy = ? WHERE id = 0", (float(sys.argv[2]),))
print("committed", flush=True)
if sys.argv[3] == "kill":
    os._exit(0)  # as kill -9: no checkpoint, the -wal and -shm stay
sys.stdin.readline()
store.close()
"""


def _files(folder: Path) -> dict:
    """Every file beside the store: name -> (sha256, mtime_ns, size)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            out[p.name] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size)
    return out


def _writer(path: Path, mode: str) -> python_child:
    proc = python_child(WRITER, str(path), repr(PROBE), mode, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "committed"
    return proc


def _readers(path: Path, out: Path) -> list:
    out.mkdir(parents=True, exist_ok=True)
    return [
        ["export", str(path), "--out", str(out / "o.csv")],
        ["plot", str(path), "--out", str(out / "o.png"), "--trajectories-out", str(out / "tr.png")],
        ["transfer", str(path), "--out", str(out / "t.png")],
        ["report", str(path), "--out", str(out / "o.html")],
        ["sweep", str(CONFIG), "--store", str(path), "--dry-run"],
    ]


def _check_readers(path: Path, tmp_path: Path, capsys) -> None:
    folder = path.parent
    for argv in _readers(path, tmp_path / "out"):
        before = _files(folder)
        time.sleep(0.02)  # an mtime written now would differ
        main(argv)
        capsys.readouterr()
        assert _files(folder) == before, argv[0]
    before = _files(folder)
    with Store(path, create=False) as store:  # and the commit in the -wal is read
        assert store.cells()[0]["best_test_accuracy"] == PROBE
    assert _files(folder) == before
    assert f"{PROBE}" in (tmp_path / "out" / "o.csv").read_text()


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = tmp_path / "data"
    folder.mkdir()
    yield _store(folder / "s.db")
    # no private copy left behind (torch's own inductor cache folder aside: torch imports dynamo,
    # which makes it, at the first model built on the meta device, the sweep's size check)
    assert [p for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor_")] == []


def test_readers_beside_a_live_writer_in_another_process(store, tmp_path, capsys):
    # a mode=ro reader wrote its read marks into the running writer's -shm (changed bytes, mtime)
    writer = _writer(store, "wait")
    try:
        assert {f"{store.name}-wal", f"{store.name}-shm"} <= set(_files(store.parent))
        _check_readers(store, tmp_path, capsys)
    finally:
        writer.communicate("\n", timeout=60)
    assert writer.returncode == 0


def test_readers_after_a_killed_writer(store, tmp_path, capsys):
    # the -wal and -shm of a killed writer: a mode=ro reader rebuilt the -shm (rewrote it)
    _writer(store, "kill").wait(timeout=60)
    assert {f"{store.name}-wal", f"{store.name}-shm"} <= set(_files(store.parent))
    _check_readers(store, tmp_path, capsys)


def test_readers_of_a_wal_without_its_shm(store, tmp_path, capsys):
    # a -wal copied without its -shm: a mode=ro reader created the -shm beside the store
    _writer(store, "kill").wait(timeout=60)
    Path(f"{store}-shm").unlink()
    _check_readers(store, tmp_path, capsys)
    assert not Path(f"{store}-shm").exists()


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only view of a folder (a bind mount remounted ``ro``); skipped where this
    process may not mount (not root, no CAP_SYS_ADMIN)."""
    source, view = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only view")
    if subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield source, view
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


@pytest.mark.parametrize("shm", [True, False])
def test_a_store_on_a_read_only_file_system_is_read_with_its_wal(read_only_mount, shm):
    # a -wal without its -shm on a read-only file system: the reader fell back to reading the
    # main file alone (immutable) and missed the -wal's commits without a word
    source, view = read_only_mount
    path = _store(source / "s.db")
    _writer(path, "kill").wait(timeout=60)
    if not shm:
        Path(f"{path}-shm").unlink()
    with pytest.raises(OSError):
        (view / "probe").write_text("x")
    before = _files(source)
    with Store(view / "s.db", create=False) as store:
        assert store.cells()[0]["best_test_accuracy"] == PROBE
    assert _files(source) == before


def test_a_new_store_on_a_read_only_file_system_is_refused_naming_it(read_only_mount, capsys):
    # the clean-up of the temporary file it is built under failed too (EROFS), and that OSError,
    # naming '.s.db.<pid>.<hex>.tmp', replaced SQLite's; the API raised OSError, not StoreError
    from catapult.sweep.store import StoreError

    _, view = read_only_mount
    for target in (view / "s.db", view / "sub" / "s.db"):
        with pytest.raises(StoreError, match=f"cannot create the store {target}: .*read-only"):
            Store(target)
        assert main(["sweep", str(CONFIG), "--store", str(target), "--progress", "none"]) == 2
        err = capsys.readouterr().err
        assert f"cannot create the store {target}" in err and ".tmp" not in err, err


@pytest.mark.parametrize("writer_mode", ["close", "wait"])
def test_a_reader_held_open_sees_a_sweep_that_started_after_it(store, writer_mode):
    # a Store(create=False) opened with no writer connected read the file immutable and kept
    # its cached pages: a cell written since by a driver in another process read as before
    # (and pages of two states mixed read as "database disk image is malformed")
    with Store(store, create=False) as reader:
        before = reader.cells()[0]["best_test_accuracy"]
        assert before != PROBE
        writer = _writer(store, "wait")
        try:
            if writer_mode == "close":  # the driver ends: its checkpoint rewrites the main file
                writer.communicate("\n", timeout=60)
                assert not Path(f"{store}-wal").exists()
            assert reader.cells()[0]["best_test_accuracy"] == PROBE
            assert len(reader.cells()) == 4 and reader.meta("schema_version") == "1"
        finally:
            if writer.poll() is None:
                writer.communicate("\n", timeout=60)


def test_a_reader_never_mixes_pages_of_two_states(tmp_path):
    # 100,000 rows read in part, then rewritten by another process: the immutable reader read
    # its cached pages beside the new ones ("database disk image is malformed")
    from catapult.sweep.store_file import connect_readonly

    path = tmp_path / "t.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [("x" * 50,)] * 100_000)
    conn.execute("COMMIT")
    conn.close()
    reader = connect_readonly(path)
    assert reader.execute("SELECT COUNT(*) FROM t WHERE i < 100").fetchone() == (99,)
    subprocess.run([sys.executable, "-c", f"""
import sqlite3
w = sqlite3.connect({str(path)!r}, isolation_level=None)
w.execute("BEGIN")
w.executemany("INSERT INTO t(v) VALUES (?)", [("y" * 80,)] * 20_000)
w.execute("DELETE FROM t WHERE i % 3 = 0")
w.execute("COMMIT")
w.close()
"""], check=True, timeout=120)
    truth = (80_000, 50 * (100_000 - 33_333) + 80 * (20_000 - 6_667))  # i % 3 == 0: 33,333 + 6,667 rows
    assert reader.execute("SELECT COUNT(*), SUM(LENGTH(v)) FROM t").fetchone() == truth
    reader.close()


def test_a_reader_held_open_follows_one_driver_after_another(store):
    # the last driver to close deletes the -wal and -shm and the next makes new ones: a reader
    # that had followed the first one's WAL index kept reading the deleted files (0.25, 0.35 and
    # 0.45 of the drivers after the first read as the first one's 0.15). The files are deleted
    # under the reader once a second Store of the same process has read the header and closed
    # the file (POSIX drops the process's locks on it: the driver closing then sees no reader)
    script = """
import sys
from catapult.sweep.store import Store
store = Store(sys.argv[1])
store.conn.execute("PRAGMA wal_autocheckpoint = 0")
store.conn.execute("UPDATE cells SET best_test_accuracy = ? WHERE id = 3", (float(sys.argv[2]),))
print("committed", flush=True)
sys.stdin.readline()
"""
    with Store(store, create=False) as reader:
        assert reader.cells()[3]["best_test_accuracy"] not in (0.15, 0.25, 0.35, 0.45)
        for value in (0.15, 0.25, 0.35, 0.45):
            writer = python_child(script, str(store), repr(value), env={**os.environ, "OMP_NUM_THREADS": "1"})
            try:
                assert writer.stdout.readline().strip() == "committed"
                assert reader.cells()[3]["best_test_accuracy"] == value
                with Store(store, create=False) as other:  # a second reader, e.g. `catapult.report`
                    assert other.cells()[3]["best_test_accuracy"] == value
            finally:
                writer.communicate("\n", timeout=60)
        assert reader.cells()[3]["best_test_accuracy"] == 0.45


def test_opening_a_store_beside_a_driver_of_the_same_process_keeps_its_wal(tmp_path):
    # Store() read the header with open()/close(); closing a descriptor drops every POSIX lock
    # of the process on the file, SQLite's too: another driver closing then took the store as
    # unused and deleted the -wal under this process's live writer, and a third driver's
    # writes made the store "database disk image is malformed"
    path = tmp_path / "s.db"
    writer = Store(path)
    writer.conn.execute("PRAGMA wal_autocheckpoint = 0")
    writer.conn.execute("INSERT INTO meta(key, value) VALUES ('mine', 'x')")
    with Store(path, create=False) as reader:  # a second Store of this process: a peek
        assert reader.meta("mine") == "x"
    other = f"""
from catapult.sweep.store import Store
s = Store({str(path)!r}); s.conn.execute("INSERT INTO meta(key, value) VALUES ('other', 'y')"); s.close()"""
    run_python(other, timeout=120)
    assert Path(f"{path}-wal").exists()  # this process's writer still uses it
    third = python_child(f"""
import sys
from catapult.sweep.store import Store
s = Store({str(path)!r})
s.conn.execute("PRAGMA wal_autocheckpoint = 0")
for i in range(200):
    s.conn.execute("INSERT INTO meta(key, value) VALUES (?, 'third')", (f"t{{i}}",))
print("ok", flush=True)
sys.stdin.readline()
s.close()""")
    assert third.stdout.readline().strip() == "ok"
    for i in range(200):
        writer.conn.execute("INSERT INTO meta(key, value) VALUES (?, 'first')", (f"f{i}",))
    third.communicate("\n", timeout=120)
    writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    counts = dict(conn.execute("SELECT value, COUNT(*) FROM meta WHERE key != 'schema_version' GROUP BY value"))
    conn.close()
    assert counts == {"x": 1, "y": 1, "first": 200, "third": 200}


def test_a_reader_of_another_thread_does_not_stop_a_reopen(store):
    # a reopen closes the process's other live readers of the file; one made in another thread
    # raised sqlite3.ProgrammingError ("created in a thread can only be used in that same thread")
    import threading

    script = WRITER.replace("WHERE id = 0", "WHERE id = 2")
    readers = {}

    def other_thread():
        readers["thread"] = Store(store, create=False)
        readers["seen"] = readers["thread"].cells()[2]["best_test_accuracy"]

    for value in (0.15, 0.25):
        writer = python_child(script, str(store), repr(value), "wait", env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            assert writer.stdout.readline().strip() == "committed"
            if value == 0.15:
                thread = threading.Thread(target=other_thread)
                thread.start()
                thread.join()
                assert readers["seen"] == 0.15
                reader = Store(store, create=False)
            assert reader.cells()[2]["best_test_accuracy"] == value
            # a backup copy made by this process closes a descriptor of the file, which drops the
            # process's POSIX locks on it: the driver's close then deletes its -wal and -shm
            shutil.copyfile(store, store.parent.parent / f"backup{value}.db")
        finally:
            writer.communicate("\n", timeout=60)
    reader.close()


def test_a_damaged_wal_beside_its_shm_is_read_as_sqlite_recovers_it(store, tmp_path, capsys):
    # random bytes in place of a killed driver's -wal, its -shm intact: a mode=ro reader
    # rebuilt the -shm (writing it) and read the main file; the read-only index then refused
    # the store ("not a usable catapult sweep store (SQLite says: locking protocol)", exit 2)
    main_only = tmp_path / "main_only.db"
    shutil.copyfile(store, main_only)  # before the driver: what the main file alone holds
    truth = sqlite3.connect(f"file:{main_only}?immutable=1", uri=True).execute(
        "SELECT best_test_accuracy FROM cells WHERE id = 0").fetchone()[0]
    _writer(store, "kill").wait(timeout=60)
    wal = Path(f"{store}-wal")
    wal.write_bytes(os.urandom(wal.stat().st_size))  # no frame of it is valid: none is read
    before = _files(store.parent)
    with Store(store, create=False) as reader:
        assert reader.cells()[0]["best_test_accuracy"] == truth != PROBE
    assert main(["export", str(store), "--out", str(tmp_path / "o.csv")]) == 0
    capsys.readouterr()
    assert _files(store.parent) == before


def _connections_to(store: Path, monkeypatch) -> list[str]:
    """Every ``sqlite3.connect`` of this process that opens ``store`` itself, by its parameters
    (``immutable=1``, ``readonly_shm=1``, ...; "" for a plain path), from now on. One that would
    read ``store``'s -wal through its -shm (anything but ``immutable``, which reads neither) is
    refused at once: beside a damaged -wal SQLite answers it SQLITE_PROTOCOL only after ~10 s of
    retries (its own sleeps, in walTryBeginRead: no busy handler or busy_timeout sees them)."""
    seen: list[str] = []
    connect = sqlite3.connect
    target = os.path.realpath(store)

    def watched(database, *args, **kwargs):
        name, _, query = str(database).partition("?")
        if kwargs.get("uri") and name.startswith("file:"):
            name = unquote(name[len("file:"):])
        if os.path.realpath(name) == target:
            seen.append(query)
            assert "immutable=1" in query.split("&"), (
                f"a reader opened the damaged store with {query or 'no parameters'!r}: SQLite's ~10 s of "
                "SQLITE_PROTOCOL retries")
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", watched)
    return seen


def test_a_damaged_wal_beside_its_shm_is_read_without_sqlites_ten_second_retries(tmp_path, capsys, monkeypatch):
    # SQLite answers SQLITE_PROTOCOL for a -shm indexing frames of another -wal only after ~10 s
    # of its own retries: every reader of such a store (Store, export, plot, report) took 10 s.
    # The files of a writer that had not checkpointed, copied as they were (as a killed one left
    # them), the -wal then damaged. No reader may open the store but immutable (its header probes):
    # the -wal is read from a copy (checked by the connections' parameters, not by the clock; with
    # store_file's wal_unmatched check removed the reader's readonly_shm connection fails here)
    live = tmp_path / "live"
    live.mkdir()
    path = _store(live / "s.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("UPDATE cells SET best_test_accuracy = ? WHERE id = 0", (PROBE,))
    folder = tmp_path / "data"
    folder.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{path}{suffix}", folder / f"s.db{suffix}")
    writer.close()
    store = folder / "s.db"
    index = Path(f"{store}-shm").read_bytes()
    assert index[12] == 1 and int.from_bytes(index[16:20], sys.byteorder) > 0  # it indexes frames
    wal = Path(f"{store}-wal")
    wal.write_bytes(os.urandom(wal.stat().st_size))
    before = _files(folder)
    opened = _connections_to(store, monkeypatch)
    with Store(store, create=False) as reader:
        assert reader.cells()[0]["best_test_accuracy"] != PROBE  # no frame of the -wal is valid
    assert opened and set(opened) <= {"mode=ro&immutable=1"}, opened   # the header probes; the rows from a copy
    del opened[:]
    assert main(["export", str(store), "--out", str(tmp_path / "o.csv")]) == 0
    assert opened and set(opened) <= {"mode=ro&immutable=1"}, opened
    capsys.readouterr()
    assert _files(folder) == before


def _posix_locks_of_this_process(path: Path) -> list[str]:
    """The POSIX locks this process holds on ``path``, "TYPE START END" by range (tests/proc_locks)."""
    return [f"{kind} {start} {end}" for start, end, kind in posix_locks(path)]


@pytest.mark.skipif(not Path("/proc/self/fdinfo").exists(), reason="reads Linux's lock lists")
def test_a_reader_beside_a_driver_of_the_same_process_keeps_the_drivers_shm_lock(tmp_path):
    # the check for a damaged -wal read the -shm with open() and closed it: that dropped the
    # driver's read lock on its -shm (byte 128, SQLite's sign that a connection is open), after which
    # another process's connection takes itself for the first and rebuilds the index under the driver
    path = tmp_path / "s.db"
    driver = Store(path)
    driver.conn.execute("PRAGMA wal_autocheckpoint = 0")
    driver.conn.execute("INSERT INTO meta(key, value) VALUES ('mine', 'x')")
    held = _posix_locks_of_this_process(Path(f"{path}-shm"))
    assert held, "the driver holds no lock on its -shm: the premise is gone"
    with Store(path, create=False) as reader:
        assert reader.meta("mine") == "x"
    assert _posix_locks_of_this_process(Path(f"{path}-shm")) == held
    driver.close()
