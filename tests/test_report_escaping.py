"""The HTML report escapes everything that comes from the store: a store whose every text
column holds markup yields a page with no markup of its own (no stored XSS)."""
from __future__ import annotations

import html.parser
import json
import sqlite3

from catapult import config as cfg
from catapult.report import write_report
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun

MARKUP = "\"'><script>alert(1)</script><img src=x onerror=alert(2)><b>"
TEXT_COLUMNS = {
    "cells": ("config_json", "swept_json", "status", "error", "summary_json", "worker"),
    "meta": ("value",),
    "lambda0": ("key", "inputs_json"),
    "metrics": ("extra_json",),
}


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _hostile_store(path):
    """A real store, then markup written into every text column (its CHECK on status dropped,
    as an attacker's hand-made file would have it)."""
    config = cfg.validate({"name": "x", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [-3, 0]},
                                 "schedule.warmup_steps": [1, 8], "model.density": [1.0, 0.5]}})
    run_sweep(config, spec, path, run_fn=FakeRun(diverge_above=1.0), lambda0_fn=lambda c: 2.0, progress="none")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA writable_schema=ON")
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='cells'").fetchone()[0]
    start = sql.index("CHECK")
    conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'cells'",
                 (sql[:start] + sql[sql.index("))", start) + 2:],))
    conn.execute("PRAGMA writable_schema=OFF")
    conn.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE cells SET error = ?, worker = ?, summary_json = ? WHERE id % 2 = 0",
                 (MARKUP, MARKUP, json.dumps({"note": MARKUP})))
    conn.execute("UPDATE cells SET status = ? WHERE id = 1", (MARKUP,))
    # a swept value is the grid's value at the cell's place (a value off the grid is a damaged store):
    # markup as model.density's second value, in the axis and in every cell at that place (odd ids)
    for cell_id, text in conn.execute("SELECT id, swept_json FROM cells WHERE id % 2 = 1").fetchall():
        conn.execute("UPDATE cells SET swept_json = ? WHERE id = ?",
                     (json.dumps({**json.loads(text), "model.density": MARKUP}), cell_id))
    conn.execute("UPDATE cells SET status = 'failed', error = ? WHERE id = 3", (MARKUP + "\n" + MARKUP,))
    conn.execute("UPDATE metrics SET extra_json = ?", (json.dumps({"note": MARKUP}),))
    conn.execute("UPDATE lambda0 SET key = ? || rowid, inputs_json = ?", (MARKUP, json.dumps({"seed": MARKUP})))
    axes = json.loads(conn.execute("SELECT value FROM meta WHERE key='axes_json'").fetchone()[0])
    for axis in axes:
        axis["labels"] = [MARKUP for _ in axis["labels"]]
        axis["title"] = MARKUP
        if axis["key"] == "model.density":
            axis["values"][1] = MARKUP
    conn.execute("UPDATE meta SET value = ? WHERE key = 'axes_json'", (json.dumps(axes),))
    spec_doc = json.loads(conn.execute("SELECT value FROM meta WHERE key='spec_json'").fetchone()[0])
    spec_doc["base"]["name"] = MARKUP
    conn.execute("UPDATE meta SET value = ? WHERE key = 'spec_json'", (json.dumps(spec_doc),))
    for key in ("catapult_version", "spec_hash"):
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (MARKUP, key))
    conn.execute("INSERT INTO meta(key, value) VALUES ('note', ?)", (MARKUP,))
    conn.close()


def test_markup_in_every_text_column_of_the_store_is_escaped(tmp_path):
    _hostile_store(tmp_path / "s.db")
    text = write_report(tmp_path / "s.db", tmp_path / "r.html").read_text(encoding="utf-8")
    page = _Tags()
    page.feed(text)
    tags = {tag for tag, _ in page.tags}
    assert "script" not in tags and "<script" not in text.lower()
    assert not any(tag == "img" and attrs.get("src") == "x" for tag, attrs in page.tags)
    assert not any(any(name.startswith("on") for name in attrs) for _, attrs in page.tags)
    assert "&lt;script&gt;" in text  # the markup is shown as text, not dropped
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "span", "b", "div",
                    "img", "table", "tr", "th", "td", "details", "summary", "pre", "small"}
    # the one <b> the page makes itself is the counts' numbers: none comes from the markup
    assert text.count("<b>") == sum(1 for tag, _ in page.tags if tag == "b")
    bold = [i for i, (tag, _) in enumerate(page.tags) if tag == "b"]
    assert len(bold) <= 7   # the page's own labels (7th: the transfer section's "At the grid's end")
