"""The store's JSON columns are standard JSON (RFC 8259), which SQLite's own ``json_extract``
reads: they were written with Python's ``allow_nan``, so a config's ``train.divergence_factor:
.inf`` (the default) made ``config_json`` hold ``Infinity``, and ``SELECT json_extract(config_json,
'$.seed') FROM cells`` failed with "malformed JSON" on every store (so did spec_json, and a diverged
cell's summary_json and metrics extra_json with their NaN and inf). Now inf is written ``1e999``
and a NaN as ``{"$float": "NaN"}``; a store written in the old form (built here with the real
sqlite3 module, every JSON column re-encoded as the old code wrote it) loads, exports and resumes
alike, value for value. Truth: SQLite's own JSON reader, and Python's ``json`` in strict mode."""
from __future__ import annotations

import json
import math
import sqlite3

import pytest

from catapult import config as C
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.store import Store, write_csv

from sweep_fakes import FakeRun

#: Every JSON column of a store: (table, column, key column).
JSON_COLUMNS = [("cells", "config_json", "id"), ("cells", "swept_json", "id"), ("cells", "summary_json", "id"),
                ("metrics", "extra_json", "cell_id, step"), ("lambda0", "inputs_json", "key")]
META_JSON = ("spec_json", "axes_json")


class _DivergingRun(FakeRun):
    """The fake, with what a real diverged run records: a NaN final loss and an inf peak in its
    summary, and a per-step value of no column of its own (extra_json), NaN at the divergence."""

    def __call__(self, config, progress=None):
        result = super().__call__(config, progress)
        for row in result.metrics:
            row["grad_norm"] = 1.0
        if result.status == "diverged":
            result.metrics[-1]["grad_norm"] = math.nan
            result.summary.update(final_train_loss=math.nan, peak_train_loss=math.inf)
        return result


def _sweep(path):
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [-2, 1]}}, "seeds": [0, 3]})
    base = C.validate({"name": "j", "train": {"steps": 3}})
    assert base["train"]["divergence_factor"] == math.inf   # the default the issue is about
    return run_sweep(base, spec, path, run_fn=_DivergingRun(diverge_above=1.0), lambda0_fn=lambda c: 2.0,
                     progress="none")


def _strict(text):
    """``text`` read as RFC 8259 JSON: Python's reader refusing its own non-standard tokens."""
    def refuse(token):
        raise ValueError(f"not standard JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def _same(value) -> str:
    """A value's text with NaN and inf spelt out (NaN != NaN): equal texts, equal values."""
    return json.dumps(value, sort_keys=True, allow_nan=True, default=repr)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("json")
    new = folder / "new.db"
    _sweep(new)
    old = folder / "old.db"
    with sqlite3.connect(new) as src, sqlite3.connect(old) as dst:
        src.backup(dst)
    with sqlite3.connect(old) as conn:   # as catapult wrote them before: json.dumps(..., allow_nan=True)
        for table, column, key in JSON_COLUMNS:
            keys = key.split(", ")
            match = " AND ".join(f"{k} = ?" for k in keys)
            for *k, text in conn.execute(f"SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL").fetchall():
                value = json.loads(text, object_hook=lambda d: math.nan if d == {"$float": "NaN"} else d)
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {match}",
                             (json.dumps(value, default=str, allow_nan=True), *k))
        for name in META_JSON:
            value = json.loads(conn.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()[0])
            text = (json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True) if name == "spec_json"
                    else json.dumps(value, allow_nan=True))
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (text, name))
    conn.close()
    return new, old


def test_sqlite_json_extract_reads_every_json_column_of_a_new_store(stores):
    new, old = stores
    with sqlite3.connect(new) as conn:
        rows = conn.execute("SELECT id, json_extract(config_json, '$.seed'), json_extract(swept_json, '$.seed'), "
                            "json_extract(config_json, '$.train.divergence_factor') FROM cells ORDER BY id").fetchall()
        assert [r[1] for r in rows] == [r[2] for r in rows] == [0, 3] * 4
        assert all(r[3] == math.inf for r in rows)
        peaks = conn.execute("SELECT json_extract(summary_json, '$.peak_train_loss') FROM cells "
                             "WHERE status = 'diverged'").fetchall()
        assert peaks and all(p[0] == math.inf for p in peaks)
        for table, column, _ in JSON_COLUMNS:
            texts = [t for (t,) in conn.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")]
            assert texts, (table, column)
            for text in texts:
                assert conn.execute("SELECT json_valid(?)", (text,)).fetchone()[0] == 1, (column, text)
                _strict(text)
        for name in META_JSON:
            text = conn.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()[0]
            assert conn.execute("SELECT json_valid(?)", (text,)).fetchone()[0] == 1, name
            _strict(text)
    conn.close()
    with sqlite3.connect(old) as conn:   # the old form: SQLite (3.40 here) refuses it, which is the issue
        text = conn.execute("SELECT config_json FROM cells WHERE id = 0").fetchone()[0]
        assert '"divergence_factor": Infinity' in text
        with pytest.raises(ValueError, match="not standard JSON: Infinity"):
            _strict(text)
    conn.close()


def test_an_old_form_store_loads_exports_and_resumes_as_the_new_form(stores, tmp_path):
    new, old = stores
    with sqlite3.connect(new) as conn:   # the new form carries the non-finite values the old spells out
        texts = " ".join(t for (t,) in conn.execute("SELECT summary_json FROM cells WHERE status = 'diverged'"))
    conn.close()
    assert '"final_train_loss": {"$float": "NaN"}' in texts and '"peak_train_loss": 1e999' in texts
    read = {}
    for path in (new, old):
        with Store(path, create=False) as store:
            cells = store.cells()
            read[path] = _same([cells, [store.metrics(c["id"]) for c in cells], store.spec(), store.axes(),
                                [{**r, "inputs_json": store.json_field(r["inputs_json"], "inputs")}
                                 for r in store.lambda0_table()]])
            write_csv(store, tmp_path / f"{path.stem}.csv")
            diverged = next(c for c in cells if c["status"] == "diverged")
            assert math.isnan(diverged["summary"]["final_train_loss"])
            assert diverged["summary"]["peak_train_loss"] == math.inf
            assert cells[0]["config"]["train"]["divergence_factor"] == math.inf
    assert read[new] == read[old]
    assert (tmp_path / "new.csv").read_bytes() == (tmp_path / "old.csv").read_bytes()
    for path in (new, old):   # the same sweep resumes on either: nothing to run, nothing refused
        outcome = _sweep(path)
        assert (outcome.mode, outcome.ran, outcome.reused) == ("resumed", 0, 8)


@pytest.mark.parametrize("canonical", [False, True])
def test_the_non_finite_words_inside_a_string_are_left_as_written(canonical):
    # Mutation pass 23b (SJ4): without the string alternative in the token pattern, a name or path holding
    # Infinity / NaN as text ("NaN-probe", "x/-Infinity") was rewritten to 1e999 / {"$float": "NaN"} inside its quotes
    from catapult.sweep.store_rows import json_text, read_json

    value = {"name": "NaN-probe \"Infinity\"", "path": "x/-Infinity", "f": float("inf"), "g": float("nan")}
    text = json_text(value, canonical=canonical)
    strict = json.loads(text, parse_constant=lambda word: pytest.fail(f"non-standard token {word}"))
    assert strict["name"] == value["name"] and strict["path"] == value["path"] and strict["f"] == math.inf
    assert strict["g"] == {"$float": "NaN"}
    back = read_json(text)
    assert back["name"] == value["name"] and back["path"] == value["path"] and back["f"] == math.inf
    assert math.isnan(back["g"])
    row = sqlite3.connect(":memory:").execute("SELECT json_extract(?, '$.name'), json_extract(?, '$.path')",
                                              (text, text)).fetchone()
    assert row == (value["name"], value["path"])


def test_the_canonical_form_writes_the_nan_marker_without_whitespace_too():
    # Mutation pass 23b (SJ5): the canonical form (the spec document's: sorted keys, no whitespace) wrote its
    # NaN marker with the default separators, '{"$float": "NaN"}', the one spaced part of the text
    from catapult.sweep.store_rows import json_text

    value = {"b": [float("nan"), -float("inf")], "a": {"z": float("nan"), "y": 1}}
    text = json_text(value, canonical=True)
    marker = {"$float": "NaN"}
    truth = json.dumps({"a": {"y": 1, "z": marker}, "b": [marker, -1e999]}, sort_keys=True, separators=(",", ":"))
    assert text == truth.replace("-Infinity", "-1e999") and " " not in text


def test_the_canonical_form_is_one_definition_that_the_store_reads_without_the_config():
    # json_text(canonical=True) repeated spec.canonical_json's json.dumps: two definitions of the form spec
    # hashes are of. One now, in store_rows, which loads no config package (a fresh interpreter checks it)
    import subprocess
    import sys

    code = ("import sys, catapult.sweep.store_rows as rows\n"
            "assert 'catapult.config' not in sys.modules, 'store_rows loaded the config'\n"
            "from catapult.sweep import spec\n"
            "assert spec.canonical_json is rows.canonical_json\n"
            "value = {'b': (1, 2.5), 'a': {'z': 'x', 'y': None}}\n"
            "assert rows.json_text(value, canonical=True) == rows.canonical_json(value) == "
            "'{\"a\":{\"y\":null,\"z\":\"x\"},\"b\":[1,2.5]}'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
