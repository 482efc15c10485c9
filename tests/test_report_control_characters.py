"""The HTML report wrote a store's control characters raw: a cell's error holding a NUL, an ESC or
a form feed (an exception's text, or a hand-made store's) put characters HTML does not allow into
the page (each a parse error to an HTML5 parser and a validator). They are now written as their
escapes (``\\x00``), newline and tab kept, as the terminal output writes them."""
from __future__ import annotations

import sqlite3
import unicodedata

from catapult import config as cfg
from catapult.report import write_report
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun


def test_control_characters_in_a_stores_text_are_escaped_in_the_report(tmp_path):
    config = cfg.validate({"name": "t", "train": {"steps": 2}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2]}})
    store = tmp_path / "s.db"
    run_sweep(config, spec, store, run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    conn = sqlite3.connect(store)
    conn.execute("UPDATE cells SET status = 'failed', error = ? WHERE id = 1",
                 ("boom\x00\x1b[2J\x0cend\nsecond\tline\x7f",))
    conn.commit()
    conn.close()
    page = write_report(store, tmp_path / "r.html").read_text(encoding="utf-8")
    assert sorted({c for c in page if unicodedata.category(c) == "Cc" and c not in "\n\t"}) == []
    assert "<pre>boom\\x00\\x1b[2J\\x0cend\nsecond\tline\\x7f</pre>" in page
