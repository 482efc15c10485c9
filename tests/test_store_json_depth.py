"""A hand-made store whose JSON rows nest hundreds of levels deep: Python's ``json`` parses them (up to
about 1000 levels), and their consumers then overflowed the stack. ``catapult report`` on a spec
with a value 600 levels deep raised RecursionError out of YAML's dumper, ``catapult transfer`` on a
swept value 900 levels deep out of the curves' keys: tracebacks. Any store JSON nested more than
``MAX_JSON_DEPTH`` levels is now a damaged store, exit 2 naming the row, nothing written."""
from __future__ import annotations

import json
import sqlite3

import pytest

from catapult import cli
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.store import StoreError
from catapult.sweep.store_rows import MAX_JSON_DEPTH

from sweep_fakes import FakeRun


CONFIG = cfg.validate({"name": "t", "train": {"steps": 2}})
SPEC = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2], "model.density": [1.0, 0.5]}})


def _sweep(path):
    run_sweep(CONFIG, SPEC, path, run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")


def _store(tmp_path):
    path = tmp_path / "s.db"
    _sweep(path)
    return path


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _refused_as_too_deep(command, store, out, row, capsys):
    """``catapult COMMAND store --out out`` exits 2 naming ``row`` as nested too deep, writing nothing."""
    code = cli.main([command, str(store), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"catapult {command}: error: {store} is damaged: {row} nests more than "
                                 f"{MAX_JSON_DEPTH} levels deep\n")
    assert sorted(p.name for p in store.parent.iterdir()) == ["s.db"]


def test_a_spec_nested_600_deep_is_a_damaged_store_for_the_report(tmp_path, capsys):
    store = _store(tmp_path)
    conn = sqlite3.connect(store)
    text = conn.execute("SELECT value FROM meta WHERE key = 'spec_json'").fetchone()[0]
    spec = json.loads(text)
    spec["base"]["tags"] = "@@"
    conn.execute("UPDATE meta SET value = ? WHERE key = 'spec_json'", (json.dumps(spec).replace('"@@"', _nested(600)),))
    conn.commit()
    conn.close()
    _refused_as_too_deep("report", store, tmp_path / "r.html", "meta spec_json", capsys)


def test_a_swept_value_nested_900_deep_is_a_damaged_store_for_transfer(tmp_path, capsys):
    store = _store(tmp_path)
    conn = sqlite3.connect(store)
    axes = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'axes_json'").fetchone()[0])
    (density,) = [a for a in axes if a["key"] == "model.density"]
    density["values"][1] = "@@"   # 0.5, in the axis and in every cell at that place
    conn.execute("UPDATE meta SET value = ? WHERE key = 'axes_json'", (json.dumps(axes).replace('"@@"', _nested(900)),))
    for cell_id, text in conn.execute("SELECT id, swept_json FROM cells").fetchall():
        swept = json.loads(text)
        if swept["model.density"] == 0.5:
            swept["model.density"] = "@@"
            conn.execute("UPDATE cells SET swept_json = ? WHERE id = ?",
                         (json.dumps(swept).replace('"@@"', _nested(900)), cell_id))
    conn.commit()
    conn.close()
    _refused_as_too_deep("transfer", store, tmp_path / "c.png", "meta axes_json", capsys)


@pytest.mark.parametrize("depth", [900, 990])
def test_a_resume_over_a_cell_nested_deep_is_refused_as_a_damaged_store(tmp_path, depth):
    # the resume's cell check read the stored rows with json.loads alone: 990 levels deep was a
    # RecursionError traceback out of the JSON decoder, 900 a refusal that printed all 900 brackets
    store = _store(tmp_path)
    conn = sqlite3.connect(store)
    swept = json.loads(conn.execute("SELECT swept_json FROM cells WHERE id = 1").fetchone()[0])
    swept["model.density"] = "@@"
    conn.execute("UPDATE cells SET swept_json = ? WHERE id = 1", (json.dumps(swept).replace('"@@"', _nested(depth)),))
    conn.commit()
    conn.close()
    before = store.read_bytes()
    with pytest.raises(StoreError) as refused:
        _sweep(store)
    message = str(refused.value)
    assert message.startswith(f"{store} is damaged: cell 1's swept_json ") and len(message) < 300
    assert store.read_bytes() == before
