"""A store whose JSON columns were damaged or hand-edited (not JSON, or JSON of another shape)
is refused by every reader with exit code 2 and a message naming the column and cell, never a
traceback (a ValueError/AttributeError/TypeError from deep in the export); the file is left as
it was."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from catapult import config as cfg
from catapult.cli import main
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.store import Store, StoreError

from sweep_fakes import FakeLambda0, FakeRun

# (SQL that damages one column, the words the message must say)
DAMAGE = {
    "schema_version": ("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'", "schema_version 'abc'"),
    "spec_json": ("UPDATE meta SET value = 'nope' WHERE key = 'spec_json'", "meta spec_json is not valid JSON"),
    "spec_json_shape": ("UPDATE meta SET value = '[1]' WHERE key = 'spec_json'", "meta spec_json is a JSON list"),
    "axes_json": ("UPDATE meta SET value = '{}' WHERE key = 'axes_json'", "meta axes_json is a JSON dict"),
    "axes_entries": ("UPDATE meta SET value = '[1]' WHERE key = 'axes_json'", "meta axes_json is not a list of axes"),
    "config_json": ("UPDATE cells SET config_json = '{bad' WHERE id = 0", "cell 0 config_json is not valid JSON"),
    "swept_json": ("UPDATE cells SET swept_json = '[1, 2]' WHERE id = 0", "cell 0 swept_json is a JSON list"),
    "summary_json": ("UPDATE cells SET summary_json = '5' WHERE id = 0", "cell 0 summary_json is a JSON int"),
    # a hand-edited swept value off the grid was drawn at the cell's place (or another value's),
    # exported and reported as if the sweep had run it
    "swept_off_grid": ("""UPDATE cells SET swept_json = '{"optimizer.lr": "2^0/lambda0", "schedule.warmup_steps": 7}'
                          WHERE id = 0""",
                       "cell 0 swept_json schedule.warmup_steps 7 is not the grid's value at the cell's place (1)"),
    "swept_other_place": ("""UPDATE cells SET swept_json = '{"optimizer.lr": "2^1/lambda0", "schedule.warmup_steps": 1}'
                             WHERE id = 0""",
                          "cell 0 swept_json optimizer.lr '2^1/lambda0' is not the grid's value at the cell's place"),
    "swept_made_up": ("""UPDATE cells SET swept_json = '{"optimizer.lr": "2^5/lambda0", "schedule.warmup_steps": 1}'
                         WHERE id = 0""", "cell 0 swept_json optimizer.lr '2^5/lambda0' is not the grid's value"),
    "swept_keys": ("""UPDATE cells SET swept_json = '{"optimizer.lr": "2^0/lambda0"}' WHERE id = 0""",
                   "cell 0 swept_json has the keys ['optimizer.lr'], not the grid's"),
    "extra_json": ("UPDATE metrics SET extra_json = '[1' WHERE cell_id = 0 AND step = 0",
                   "cell 0 step 0 extra_json is not valid JSON"),
    "lambda0_inputs": ("UPDATE lambda0 SET inputs_json = '['", "inputs_json is not valid JSON"),
    # a number column holding text: the report's sum of wall times raised TypeError (a traceback)
    "wall_time_s": ("UPDATE cells SET wall_time_s = 'abc' WHERE id = 0", "cell 0 wall_time_s 'abc' is not a number"),
    "test_loss": ("UPDATE cells SET test_loss = x'00ff' WHERE id = 0", "cell 0 test_loss"),
    # the report's "created" time: ValueError / OverflowError tracebacks
    "created_at": ("UPDATE meta SET value = 'abc' WHERE key = 'created_at'", "created_at 'abc' is not a time"),
    "created_at_range": ("UPDATE meta SET value = '1e300' WHERE key = 'created_at'", "created_at '1e300'"),
    "created_at_nan": ("UPDATE meta SET value = 'nan' WHERE key = 'created_at'", "created_at 'nan'"),
}
# which readers read which column (export reads no per-step rows unless the spectrum is logged;
# plot does not read the spec; only the report shows lambda_0's inputs)
READS = {"extra_json": {"plot", "report"}, "lambda0_inputs": {"report"}, "created_at": {"report"},
         "created_at_range": {"report"}, "created_at_nan": {"report"},
         "spec_json": {"export", "report"}, "spec_json_shape": {"export", "report"}}
COMMANDS = {
    "export": lambda store, tmp: ["export", str(store), "--out", str(tmp / "o.csv")],
    "report": lambda store, tmp: ["report", str(store), "--out", str(tmp / "o.html")],
    "plot": lambda store, tmp: ["plot", str(store), "--out", str(tmp / "o.png"), "--cells", "0"],
}


def _store(path: Path) -> Path:
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [0, 1]}, "schedule.warmup_steps": [1, 4]}})
    run_sweep(config, spec, path, run_fn=FakeRun(), lambda0_fn=FakeLambda0(), progress="none")
    return path


def _damage(store: Path, sql: str) -> None:
    conn = sqlite3.connect(store)
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("good") / "s.db").read_bytes()


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_json_column_is_refused_with_its_name(tmp_path, capsys, good_store, damage, command):
    store = tmp_path / "s.db"
    store.write_bytes(good_store)
    sql, words = DAMAGE[damage]
    _damage(store, sql)
    digest = hashlib.sha256(store.read_bytes()).hexdigest()
    capsys.readouterr()
    code = main(COMMANDS[command](store, tmp_path))
    err = capsys.readouterr().err
    if command in READS.get(damage, COMMANDS):
        assert code == 2 and "is damaged" in err and words in err, err
    else:   # a column the command does not read: its damage neither stops it nor is named (was a skip)
        assert code == 0 and "is damaged" not in err and "Traceback" not in err, err
    assert hashlib.sha256(store.read_bytes()).hexdigest() == digest


def test_the_store_api_raises_store_error_naming_the_column(tmp_path):
    store = _store(tmp_path / "s.db")
    _damage(store, DAMAGE["summary_json"][0])
    with Store(store, create=False) as s:
        with pytest.raises(StoreError, match="cell 0 summary_json"):
            s.cells()
        assert s.json_field(None, "x") is None and s.json_field('{"a": 1}', "x") == {"a": 1}


@pytest.mark.parametrize("command", [*sorted(COMMANDS), "sweep"])
@pytest.mark.parametrize("keep", ["page", "half"])
def test_a_store_cut_short_is_called_damaged_not_foreign(tmp_path, capsys, good_store, command, keep):
    # a store cut short (a copy stopped midway, a full disk) was refused as "not a catapult sweep
    # store (no catapult application_id 0x43745074 in its SQLite header ...)", though its header
    # holds that id: SQLite cannot read the file, and "give --store a new path or an existing
    # store" sent the user away from their own store
    assert good_store[:16] == b"SQLite format 3\x00" and good_store[68:72] == bytes.fromhex("43745074")
    cut = good_store[:2000] if keep == "page" else good_store[:len(good_store) // 2]
    store = tmp_path / "s.db"
    store.write_bytes(cut)
    if command == "sweep":
        config = tmp_path / "grid.yaml"
        config.write_text("name: t\ntrain: {steps: 3}\nsweep: {grid: {schedule.warmup_steps: [1, 4]}}\n")
        argv = ["sweep", str(config), "--store", str(store), "--progress", "none"]
    else:
        argv = COMMANDS[command](store, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a damaged SQLite file (SQLite says: database disk image is malformed)" in err, err
    assert "application_id" not in err and "Traceback" not in err
    assert store.read_bytes() == cut and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s.db")) == [
        "s.db"]
