"""A hand-made store's text reached the terminal raw: a grid value holding escape sequences
(``ESC ]0;...BEL`` sets the window title, ``ESC [2J`` clears the screen, ``CR`` rewrites the line)
was printed as is in ``catapult transfer``'s table and its warnings, and matplotlib's "Glyph 27
missing" warnings quoted it raw too. Such characters are now written as their escapes (``\\x1b``)
wherever catapult prints or draws a store's text; the JSON output escapes them by itself."""
from __future__ import annotations

import json
import sqlite3
import unicodedata

from catapult import cli
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun

EVIL = "\x1b]0;pwned\x07\x1b[2J\r\x9b31m"


def test_a_stores_escape_sequences_are_printed_as_escapes(tmp_path, capfd):
    config = cfg.validate({"name": "t", "train": {"steps": 2}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2], "model.parametrization": ["sp", "supar"]}})
    store = tmp_path / "s.db"
    run_sweep(config, spec, store, run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    conn = sqlite3.connect(store)
    axes = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'axes_json'").fetchone()[0])
    axes[1]["values"][1] = axes[1]["labels"][1] = EVIL   # supar, in the grid and in its cells
    conn.execute("UPDATE meta SET value = ? WHERE key = 'axes_json'", (json.dumps(axes),))
    for cell_id, text in conn.execute("SELECT id, swept_json FROM cells").fetchall():
        swept = json.loads(text)
        if swept["model.parametrization"] == "supar":
            conn.execute("UPDATE cells SET swept_json = ? WHERE id = ?",
                         (json.dumps({**swept, "model.parametrization": EVIL}), cell_id))
    conn.commit()
    conn.close()
    capfd.readouterr()
    assert cli.main(["transfer", str(store), "--out", str(tmp_path / "c.png")]) == 0
    out, err = capfd.readouterr()   # the file descriptors: matplotlib's warnings too
    controls = sorted({c for c in out + err if unicodedata.category(c) == "Cc" and c not in "\n\t"})
    assert controls == []
    escaped = r"\x1b]0;pwned\x07\x1b[2J\r\x9b31m"
    assert f"| {escaped} | 0.1 (0.2) |" in out   # the panel's row (test_loss 0.1 + lr), its text escaped
    assert f"parametrization={escaped}" in err   # the grid-end warning names it
