"""A store whose meta row holds no text (a BLOB written by hand or by another program, or a number
in a forged meta table without TEXT affinity): ``catapult report`` sliced and HTML-escaped it as a
string and ended in a TypeError traceback; it is now exit 2 naming the store and the key, and the
store and the page's place are left as they were (found by a fuzz pass over forged stores)."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from catapult import cli

LEGACY = Path(__file__).parent / "data" / "store_v0.1.0.db"


def _forged(tmp_path: Path, key: str, value, retyped: bool = False) -> Path:
    store = tmp_path / "s.db"
    store.write_bytes(LEGACY.read_bytes())
    conn = sqlite3.connect(store)
    if retyped:  # the meta table re-made without TEXT affinity: a number stays a number
        conn.executescript("CREATE TABLE meta2(key TEXT PRIMARY KEY, value NOT NULL);"
                           "INSERT INTO meta2 SELECT key, value FROM meta; DROP TABLE meta;"
                           "ALTER TABLE meta2 RENAME TO meta;")
    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.commit()
    conn.close()
    return store


@pytest.mark.parametrize("key, value, retyped", [
    ("catapult_version", b"\x00\x01", False),
    ("spec_hash", b"15edcd7c", False),
    ("spec_hash", 15, True),
])
def test_report_names_a_meta_value_that_is_no_text(tmp_path, capsys, key, value, retyped):
    store = _forged(tmp_path, key, value, retyped)
    assert sqlite3.connect(store).execute("SELECT typeof(value) FROM meta WHERE key = ?",
                                          (key,)).fetchone()[0] == ("integer" if retyped else "blob")
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    page = tmp_path / "r.html"
    assert cli.main(["report", str(store), "--out", str(page)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("catapult report: error: ") and "Traceback" not in err
    assert f"{store} is damaged: its meta {key} is a {type(value).__name__}" in err and "not text" in err
    assert not page.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before

