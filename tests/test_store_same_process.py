"""A store read in the process that writes it (a notebook reading progress while ``run_sweep`` runs
in a thread): closing a descriptor drops every POSIX lock the process holds on the file, so a reader
that ``open()``s the store's files (``store_raw.wal_unmatched``, ``store_file._connect_copy``) must never do
so while a connection of this process holds them, nor while one opens. Truth: the kernel's lock lists
(``/proc/self/fdinfo``).

Each case runs in a subprocess of its own: the test process never holds a store's locks while its
files are opened and closed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/fdinfo").exists() or not Path("/proc/self/fd").exists(),
                                reason="reads the process's locks and descriptors from /proc (Linux)")

_COMMON = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n" + textwrap.dedent('''
    import json, os, shutil, sqlite3, sys, threading
    from proc_locks import posix_locks
    from pathlib import Path
    from catapult.sweep import store_file, store_raw
    from catapult.sweep.store import Store

    folder = Path(sys.argv[1])
    path = folder / "s.db"

    def left_by_a_writer():
        """A store with a commit in its -wal, and the -wal and -shm a killed writer leaves."""
        live = folder / "live.db"
        store = Store(live)
        with store.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('x', '1')")
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(f"{live}{suffix}", f"{path}{suffix}")
        store.close()

    def held_locks(suffix):
        """The kinds of the POSIX locks this process holds on the store's file ``suffix`` ("" the main
        file), by byte range (tests/proc_locks.py: not /proc/locks, read a page at a time)."""
        return [kind for *_, kind in posix_locks(f"{path}{suffix}")]
''')

_DRIVER_OPENS_MEANWHILE = _COMMON + textwrap.dedent('''
    left_by_a_writer()
    opened, release, seen = threading.Event(), threading.Event(), {}

    def driver():   # a driver of this process opens the store as the reader looks at its -shm
        store = Store(path)
        store.counts()
        opened.set()
        release.wait(10)
        seen["shm"], seen["db"] = held_locks("-shm"), held_locks("")
        store.close()

    real_open = open

    def looking(file, *args, **kwargs):
        handle = real_open(file, *args, **kwargs)
        if str(file).endswith("-shm") and "thread" not in seen:
            seen["thread"] = threading.Thread(target=driver)
            seen["thread"].start()
            seen["opened_meanwhile"] = opened.wait(0.5)
        return handle

    store_raw.open = looking
    reader = store_file.connect_readonly(path)
    seen["rows"] = reader.execute("SELECT value FROM meta WHERE key = 'x'").fetchall()
    reader.close()
    opened.wait(10)
    release.set()
    seen.pop("thread").join(10)
    print(json.dumps(seen))
''')

_COPY_BESIDE_A_WRITER = _COMMON + textwrap.dedent('''
    store = Store(path)
    with store.transaction() as conn:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('x', '1')")
    before = {"shm": held_locks("-shm"), "db": held_locks("")}
    try:   # the path a damaged -wal takes (SQLite's SQLITE_PROTOCOL, or a -shm that does not index it)
        store_file._connect_copy(path, 30.0, beside_shm=True)
        error = None
    except sqlite3.OperationalError as err:
        error = str(err)
    after = {"shm": held_locks("-shm"), "db": held_locks("")}
    store.close()
    print(json.dumps({"before": before, "after": after, "error": error}))
''')


_OUT_CHECK_BESIDE_A_WRITER = _COMMON + textwrap.dedent('''
    from catapult.cli.common import check_out_file
    from catapult.config import ConfigError

    store = Store(path)
    store.counts()
    before = {"shm": held_locks("-shm"), "db": held_locks("")}
    try:   # `export s.db --out s.db` in the process whose sweep writes s.db
        check_out_file("--out", path, replaces=(".csv",), as_suffix=".csv")
        error = None
    except ConfigError as err:
        error = str(err)
    after = {"shm": held_locks("-shm"), "db": held_locks("")}
    store.close()
    print(json.dumps({"before": before, "after": after, "error": error}))
''')


_DRIVER_STARTS_BESIDE_A_READER = _COMMON + textwrap.dedent('''
    left_by_a_writer()   # (its -wal and -shm: the reader follows the WAL index, read-only)
    reader = Store(path, create=False)
    before = reader.conn._live
    try:   # a sweep started in the notebook that reads its store
        driver = Store(path)
        with driver.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('y', '2')")
        error = None
    except Exception as err:
        error, driver = f"{type(err).__name__}: {err}", None
    seen = reader.meta("y")
    if driver is not None:
        driver.close()
    reader.close()
    print(json.dumps({"live": before, "error": error, "seen": seen}))
''')


def _run(script: str, folder: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_driver_opening_the_store_while_a_reader_of_its_process_looks_at_its_files_keeps_its_locks(tmp_path):
    seen = _run(_DRIVER_OPENS_MEANWHILE, tmp_path)
    assert seen["rows"] == [["1"]]             # the reader read the commit in the -wal
    assert seen["opened_meanwhile"] is False   # the driver's opening waited for the reader's look
    assert seen["shm"] == ["READ"] and seen["db"] == ["READ"]   # SQLite's locks of a WAL connection


def test_a_copy_is_refused_where_a_connection_of_this_process_holds_the_store(tmp_path):
    got = _run(_COPY_BESIDE_A_WRITER, tmp_path)
    assert got["before"] == {"shm": ["READ"], "db": ["READ"]}
    assert got["after"] == got["before"]       # the writer's locks are still held
    assert "a connection of this process has the store's -wal or -shm open" in got["error"]


def test_an_out_file_that_is_the_store_of_a_writer_of_this_process_is_refused_with_its_locks_kept(tmp_path):
    got = _run(_OUT_CHECK_BESIDE_A_WRITER, tmp_path)
    assert got["before"] == {"shm": ["READ"], "db": ["READ"]}
    assert got["after"] == got["before"]
    assert "is an SQLite database (a sweep store?) that would be overwritten" in got["error"]


def test_a_driver_starts_in_a_process_whose_reader_follows_the_stores_wal_index(tmp_path):
    # SQLite shares one WAL index per file and process: the reader's, opened read-only, refused the
    # writer ("attempt to write a readonly database", as "not a usable catapult sweep store")
    got = _run(_DRIVER_STARTS_BESIDE_A_READER, tmp_path)
    assert got["live"] is True
    assert got["error"] is None
    assert got["seen"] == "2"   # the reader, reopened, reads the driver's commit
