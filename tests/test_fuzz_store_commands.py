"""Property test (hypothesis): ``catapult export``, ``report``, ``plot`` and ``transfer`` on forged
sweep stores (a real one, the 0.1.0 store in tests/data, with some cells, metrics or meta rows given
values of another type: NULL, text in numeric columns, JSON of the wrong shape, BLOBs), an empty file
or a directory, exit 0 or 2, print no traceback, on exit 2 a short ``catapult COMMAND: error:`` message
and nothing new beside the store, and never change the store (its bytes hashed before and after).

Bounded and derandomized (30 examples, the same each run, and the finding as an explicit example); the scratch fuzzer of this pass ran
thousands, with flags too (its command in the pass's report). Found: a meta row that is no text
(tests/test_store_meta_not_text.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from catapult import cli  # noqa: E402

LEGACY = Path(__file__).parent / "data" / "store_v0.1.0.db"
COLUMNS = {"cells": ("swept_json", "status", "error", "lambda_0", "test_loss", "test_accuracy", "summary_json",
                     "steps_completed", "wall_time_s"),
           "metrics": ("lr", "train_loss", "sharpness", "test_accuracy", "extra_json"),
           "meta": ("catapult_version", "spec_hash", "created_at", "axes_json", "spec_json")}
VALUES = (None, "abc", "", b"\x00\x01", -1, 1e308, "[", "{}", "[]", '{"a": 1}', "null", "NaN", "finished", "diverged")
COUNTER = iter(range(10 ** 6))


@st.composite
def store_and_command(draw):
    kind = draw(st.sampled_from(["forged", "forged", "forged", "empty", "dir"]))
    edits = [(draw(st.sampled_from(sorted(COLUMNS))), draw(st.integers(0, 9)), draw(st.sampled_from(VALUES)))
             for _ in range(draw(st.integers(1, 2)))]
    command = draw(st.sampled_from(["export", "report", "plot", "transfer"]))
    return kind, [(table, COLUMNS[table][i % len(COLUMNS[table])], value) for table, i, value in edits], command


def _store(folder: Path, kind: str, edits) -> Path:
    store = folder / "s.db"
    if kind == "dir":
        store.mkdir()
        return store
    store.write_bytes(b"" if kind == "empty" else LEGACY.read_bytes())
    if kind == "forged":
        conn = sqlite3.connect(store)
        conn.execute("PRAGMA ignore_check_constraints = ON")  # a status no catapult writes
        for table, column, value in edits:
            if table == "meta":
                conn.execute("UPDATE meta SET value = ? WHERE key = ?", ("" if value is None else value, column))
            elif value is not None or column not in ("swept_json", "status"):  # NOT NULL columns
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {'id' if table == 'cells' else 'cell_id'} < 2",
                             (value,))
        conn.commit()
        conn.close()
    return store


def _digest(path: Path) -> str:
    return "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()


@settings(max_examples=30, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(case=store_and_command())
@example(case=("forged", [("meta", "catapult_version", b"\x00\x01")], "report"))  # found: a TypeError traceback
def test_store_commands_on_forged_stores(tmp_path_factory, case):
    kind, edits, command = case
    folder = tmp_path_factory.mktemp(f"forged{next(COUNTER)}")
    store = _store(folder, kind, edits)
    before = _digest(store)
    out = {"export": ["--out", str(folder / "t.csv")], "report": ["--out", str(folder / "r.html")],
           "plot": ["--out", str(folder / "h.png"), "--trajectories-out", str(folder / "j.png")],
           "transfer": ["--out", str(folder / "c.png")]}[command]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main([command, str(store), *out])
    err = stderr.getvalue()
    assert code in (0, 2) and "Traceback" not in err and len(err) < 5000, (code, err[:500])
    assert _digest(store) == before, case
    if code == 2:
        assert err.startswith(f"catapult {command}: error: "), err[:500]
        assert sorted(p.name for p in folder.iterdir()) == ["s.db"], case
