"""A store knows itself (SQLite application_id): any other file given as a store is refused
and left byte-for-byte unchanged; readers open read-only and never change the journal mode;
a read-only store file can be exported; a catapult 0.1.0 store is upgraded only when written."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from catapult import config as cfg
from catapult.cli import main
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.store import Store, StoreError
from catapult.sweep.store_file import APPLICATION_ID, identify

from sweep_fakes import FakeLambda0, FakeRun

ROOT = Path(__file__).resolve().parents[1]
OLD_STORE = Path(__file__).parent / "data" / "store_v0.1.0.db"
CONFIG = ROOT / "configs" / "smoke" / "phase_diagram.yaml"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def _journal_byte(path: Path) -> int:
    """Byte 18 of an SQLite header: 1 = rollback journal, 2 = WAL (the persistent journal mode)."""
    return path.read_bytes()[18]


def _foreign(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, caption TEXT)")
    conn.execute("INSERT INTO photos(caption) VALUES ('a cat')")
    conn.commit()
    conn.close()
    return path


def _store(path: Path) -> Path:
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.01, 0.02], "schedule.warmup_steps": [1, 4]}})
    run_sweep(config, spec, path, run_fn=FakeRun(), lambda0_fn=FakeLambda0(), progress="none")
    return path


COMMANDS = {
    "sweep": lambda store, tmp: ["sweep", str(CONFIG), "--store", str(store), "--progress", "none"],
    "export": lambda store, tmp: ["export", str(store), "--out", str(tmp / "o.csv")],
    "plot": lambda store, tmp: ["plot", str(store), "--out", str(tmp / "o.png")],
    "transfer": lambda store, tmp: ["transfer", str(store), "--out", str(tmp / "t.png")],
    "report": lambda store, tmp: ["report", str(store), "--out", str(tmp / "o.html")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", ["sqlite", "empty"])
def test_a_file_that_is_not_a_store_is_refused_and_left_unchanged(tmp_path, capsys, command, kind):
    folder = tmp_path / "data"
    folder.mkdir()
    other = folder / "other.db"
    if kind == "sqlite":
        _foreign(other)
    else:
        other.write_bytes(b"")
    before, names = _digest(other), _siblings(other)
    assert main(COMMANDS[command](other, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "not a catapult sweep store" in err and "Traceback" not in err
    assert _digest(other) == before and _siblings(other) == names  # no -wal/-shm/-journal either
    if kind == "sqlite":
        assert _journal_byte(other) == 1  # still a rollback-journal database


def test_identify_reads_the_header_only():
    assert APPLICATION_ID.to_bytes(4, "big") == b"CtPt"
    assert identify(OLD_STORE) == "legacy"


def test_a_new_store_carries_the_application_id(tmp_path):
    path = _store(tmp_path / "s.db")
    assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID
    assert identify(path) == "store"


def test_readers_never_change_the_store_or_its_journal_mode(tmp_path, capsys):
    path = _store(tmp_path / "s.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")  # e.g. a copy someone made with the sqlite3 shell
    conn.close()
    assert _journal_byte(path) == 1
    before = _digest(path)
    for command in ("export", "plot", "transfer", "report"):
        main(COMMANDS[command](path, tmp_path))
        assert _journal_byte(path) == 1, command
        assert _digest(path) == before, command
    with Store(path, create=False) as store, pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.conn.execute("DELETE FROM cells")


def _without_write_permission() -> list[str]:
    """A command prefix under which file permissions bind (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file read-only for this process")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_a_read_only_store_in_a_read_only_folder_exports(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = _store(folder / "s.db")
    before = _digest(path)
    out = tmp_path / "out.csv"
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.run([*_without_write_permission(), sys.executable, "-m", "catapult", "export", str(path),
                               "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    finally:
        folder.chmod(stat.S_IRWXU)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 1 + 4
    assert _digest(path) == before


def test_an_old_store_is_read_as_it_is_and_upgraded_when_written(tmp_path):
    old = tmp_path / "old.db"
    shutil.copyfile(OLD_STORE, old)
    before = _digest(old)
    with Store(old, create=False) as store:
        assert len(store.cells()) == 12 and not store.interrupted_ids()
    assert _digest(old) == before and identify(old) == "legacy"
    with Store(old) as store:
        assert store.counts()["finished"] == 8
    assert identify(old) == "store"
    conn = sqlite3.connect(old)
    assert {"drivers", "claims"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_store_api_refuses_a_foreign_file_for_writing(tmp_path):
    other = _foreign(tmp_path / "other.db")
    before = _digest(other)
    with pytest.raises(StoreError, match="left unchanged. Give --store a new path"):
        Store(other)
    # readers (export, plot, transfer, report) take the store as an argument, not --store
    with pytest.raises(StoreError, match="left unchanged. Give the path of a sweep store"):
        Store(other, create=False)
    assert _digest(other) == before


def test_a_reader_leaves_no_wal_or_shm_files_beside_a_wal_store(tmp_path):
    # a store in WAL mode (as drivers leave it) with no writer connected: export, plot, report
    # and the Store API read it without creating -wal/-shm files beside it (SQLite's mode=ro
    # reader of a WAL database creates both, empty, and leaves them)
    path = _store(tmp_path / "s.db")
    assert _journal_byte(path) == 2 and _siblings(path) == ["s.db"]
    before = _digest(path)
    sqlite_files = (lambda: [name for name in _siblings(path) if name.startswith("s.db")])
    for command in ("export", "plot", "report"):
        out = tmp_path / "out" / command
        out.mkdir(parents=True)
        assert main(COMMANDS[command](path, out)) == 0, command
        assert not any(name.endswith(("-wal", "-shm")) for name in _siblings(path)), command
    with Store(path, create=False) as store:
        assert len(store.cells()) == 4
    assert sqlite_files() == ["s.db"] and _digest(path) == before


def test_a_reader_beside_a_running_writer_sees_its_commits(tmp_path):
    # a writer connected (its -wal holds commits not yet in the main file): the reader reads
    # through the WAL, so it sees them
    path = _store(tmp_path / "s.db")
    with Store(path) as writer:
        writer.conn.execute("INSERT INTO meta(key, value) VALUES ('probe', 'x')")
        assert Path(f"{path}-wal").exists()
        with Store(path, create=False) as reader:
            assert reader.meta("probe") == "x"
