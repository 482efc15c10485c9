"""The sweep store's lambda_0 cache keeps whether the value's solves converged
(``lambda0.converged``), and the export, ``--aggregate`` and the report give it to the cells whose
``c/lambda0`` lr it resolved: their runs measure no lambda_0 of their own (an absolute lr, no
sharpness tracked), so their ``lambda_0_converged`` was empty. A store written before the column
still opens and reads (the mark unknown), and gains the column when opened for writing. Also the
export's ``peak_sharpness`` / ``peak_sharpness_converged`` (summary.json's), which it had not."""
from __future__ import annotations

import csv
import hashlib
import math
import shutil
import sqlite3
import statistics
from pathlib import Path

import pytest

from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.lambda0 import Lambda0, lambda0_key
from catapult.sweep.store import Store, StoreError, write_csv
from catapult.sweep.store_export import aggregate_table, export_table

from sweep_fakes import FakeRun

OLD_STORE = Path(__file__).parent / "data" / "store_v0.1.0.db"


def _fake_sweep(tmp_path, lrs=("2^-3/lambda0", 0.05), run_fn=None, lambda0_fn=None):
    config = cfg.validate({"name": "t", "train": {"steps": 4}, "eval": {"sharpness_every": 0}})
    spec = parse_sweep({"grid": {"optimizer.lr": list(lrs)}, "seeds": [0, 1]})
    path = tmp_path / "s.db"
    run_sweep(config, spec, path, run_fn=run_fn or FakeRun(diverge_above=1.0),
              lambda0_fn=lambda0_fn or (lambda c: Lambda0(2.0 + c["seed"], c["seed"] == 1)), progress="none")
    return path


def _exported(store_path, tmp_path):
    out = tmp_path / "out.csv"
    with Store(store_path, create=False) as store:
        write_csv(store, out)
    with open(out, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_cached_lambda0_s_mark_reaches_export_aggregate_and_report(tmp_path):
    from catapult.report import write_report

    path = _fake_sweep(tmp_path)
    rows = _exported(path, tmp_path)
    marks = sorted((r["optimizer.lr"], r["seed"], r["lambda_0"], r["lambda_0_converged"]) for r in rows)
    # the fake runs measure nothing: the marks are the cache's; an absolute lr has none
    assert marks == [("0.05", "0", "", ""), ("0.05", "1", "", ""),
                     ("2^-3/lambda0", "0", "2.0", "0"), ("2^-3/lambda0", "1", "3.0", "1")]
    with Store(path, create=False) as store:
        columns, agg = aggregate_table(store)
        assert sorted((t["value"], t["converged"]) for t in store.lambda0_table()) == [(2.0, 0), (3.0, 1)]
    lr = columns.index("optimizer.lr")
    means = {r[lr]: r[columns.index("lambda_0_converged_mean")] for r in agg}
    assert means == {"2^-3/lambda0": 0.5, 0.05: None}
    write_report(path, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "<th>lambda_0_converged</th>" in html and "<th>converged</th>" in html
    assert "<td class='text'>no</td>" in html and "<td class='text'>yes</td>" in html


def test_a_lambda0_fn_giving_a_bare_number_leaves_the_mark_unknown(tmp_path):
    path = _fake_sweep(tmp_path, lrs=("2^-3/lambda0",), lambda0_fn=lambda c: 2.0 + c["seed"])
    rows = _exported(path, tmp_path)
    assert "lambda_0_converged" not in rows[0] and [r["lambda_0"] for r in rows] == ["2.0", "3.0"]


def _tiny(**eval_keys):
    return cfg.validate({"name": "tiny", "seed": 0, "data": {"name": "digits", "n_train": 32, "n_test": 16},
                         "model": {"width": 8, "depth": 2}, "optimizer": {"name": "sgd", "lr": "2^0/lambda0"},
                         "train": {"steps": 2}, "eval": {"test_every": 0, **eval_keys}})


def test_the_sweep_s_mark_is_the_engine_s_own_for_the_same_config(tmp_path):
    # truth: `catapult train`'s summary (the local engine measures lambda_0 itself from c/lambda0);
    # a 2-product solve stops unconverged, a 100-product one converges
    from catapult.engine import run

    config = _tiny(sharpness_every=0)
    spec = parse_sweep({"grid": {"eval.sharpness_max_iter": [2, 100]}})
    run_sweep(config, spec, tmp_path / "s.db", progress="none")
    rows = {r["eval.sharpness_max_iter"]: r for r in _exported(tmp_path / "s.db", tmp_path)}
    for max_iter, want in (("2", 0), ("100", 1)):
        truth = run(_tiny(sharpness_every=0, sharpness_max_iter=int(max_iter))).summary
        assert int(truth["lambda_0_converged"]) == want
        assert rows[max_iter]["lambda_0_converged"] == str(want)
        assert float(rows[max_iter]["lambda_0"]) == truth["lambda_0"]


def test_a_store_written_before_the_mark_reads_and_gains_the_column_when_written(tmp_path):
    store_path = tmp_path / "old.db"
    shutil.copyfile(OLD_STORE, store_path)
    before = hashlib.sha256(store_path.read_bytes()).hexdigest()
    with Store(store_path, create=False) as store:   # read-only: the file is left as it was
        (row,) = store.lambda0_table()
        assert row["converged"] is None and store.lambda0_converged(row["key"]) is None
        columns, rows = export_table(store)
        assert len(rows) == 12 and "lambda_0_converged" not in columns
    assert hashlib.sha256(store_path.read_bytes()).hexdigest() == before
    with Store(store_path) as store:   # for writing: the column is added, the old row's mark unknown
        assert store.lambda0_converged(row["key"]) is None
        assert store.put_lambda0("new", 4.0, converged=False) == 4.0 and store.lambda0_converged("new") is False
    conn = sqlite3.connect(store_path)
    try:
        assert [r[1] for r in conn.execute("PRAGMA table_info(lambda0)")][-1] == "converged"
        # a catapult that does not know the column writes as before: its rows read unknown
        conn.execute("INSERT INTO lambda0(key, value, inputs_json, measured_at) VALUES ('older', 5.0, NULL, 0)")
        conn.commit()
    finally:
        conn.close()
    with Store(store_path, create=False) as store:
        assert store.lambda0_converged("older") is None and store.get_lambda0("older") == 5.0


def test_the_first_stored_value_wins_with_its_mark_and_a_damaged_mark_is_refused(tmp_path):
    path = _fake_sweep(tmp_path, lrs=("2^-3/lambda0",))
    with Store(path) as store:
        assert store.put_lambda0("k", 3.0, converged=False) == 3.0
        assert store.put_lambda0("k", 4.0, converged=True) == 3.0 and store.lambda0_converged("k") is False
        with pytest.raises(TypeError):
            store.put_lambda0("j", 3.0, converged="yes")
        key = lambda0_key(store.cells()[0]["config"])
        store.conn.execute("UPDATE lambda0 SET converged = 7 WHERE key = ?", (key,))
    with Store(path, create=False) as store:
        with pytest.raises(StoreError, match=f"convergence mark of its cached lambda_0 for {key} is 7"):
            export_table(store)


def test_export_gives_each_cells_peak_sharpness_and_its_mark_from_the_store(tmp_path):
    # truth: the largest finite per-step sharpness the store holds for the cell, and that row's mark
    config = _tiny(sharpness_every=1)
    spec = parse_sweep({"grid": {"optimizer.lr": ["2^0/lambda0", "2^-1/lambda0"]}, "seeds": [0, 1]})
    run_sweep(config, spec, tmp_path / "s.db", progress="none")
    with Store(tmp_path / "s.db", create=False) as store:
        columns, rows = export_table(store)
        at = {c: j for j, c in enumerate(columns)}
        assert columns[-3:] == ["peak_sharpness", "peak_sharpness_converged", "lambda_0_converged"]
        peaks = {}
        for row in rows:
            measured = [m for m in store.metrics(row[at["cell_id"]])
                        if m["sharpness"] is not None and math.isfinite(m["sharpness"])]
            top = max(measured, key=lambda m: m["sharpness"])
            assert row[at["peak_sharpness"]] == top["sharpness"]
            assert row[at["peak_sharpness_converged"]] == top["sharpness_converged"]
            peaks.setdefault(row[at["optimizer.lr"]], []).append(top["sharpness"])
        agg_columns, agg = aggregate_table(store)
    for row in agg:
        lr = row[agg_columns.index("optimizer.lr")]
        assert row[agg_columns.index("peak_sharpness_mean")] == statistics.mean(peaks[lr])
        assert row[agg_columns.index("peak_sharpness_n")] == 2


def test_a_diverged_cell_exports_its_peak_and_the_aggregate_leaves_it_out(tmp_path):
    fake = FakeRun(diverge_above=5.0)   # lr > 0.625 diverges

    def run_fn(config, progress=None):   # summaries as the engine writes them: a diverged run keeps its peak
        result = fake(config, progress)
        result.summary.update(peak_sharpness=100.0 if result.status == "diverged" else 10.0 + config["seed"],
                              peak_sharpness_converged=result.status != "diverged")
        return result

    # lambda_0 2 (seed 0) and 4 (seed 1): 2^2/lambda0 = 2 and 1 diverge, 2^0/lambda0 = 0.5 and 0.25 finish
    config = cfg.validate({"name": "t", "train": {"steps": 4}, "eval": {"sharpness_every": 0}})
    spec = parse_sweep({"grid": {"optimizer.lr": ["2^0/lambda0", "2^2/lambda0"]}, "seeds": [0, 1]})
    run_sweep(config, spec, tmp_path / "s.db", run_fn=run_fn, lambda0_fn=lambda c: 2.0 + c["seed"] * 2.0,
              progress="none")
    rows = _exported(tmp_path / "s.db", tmp_path)
    got = sorted((r["optimizer.lr"], r["seed"], r["status"], r["peak_sharpness"], r["peak_sharpness_converged"])
                 for r in rows)
    assert got == [("2^0/lambda0", "0", "finished", "10.0", "1"), ("2^0/lambda0", "1", "finished", "11.0", "1"),
                   ("2^2/lambda0", "0", "diverged", "100.0", "0"), ("2^2/lambda0", "1", "diverged", "100.0", "0")]
    with Store(tmp_path / "s.db", create=False) as store:
        columns, agg = aggregate_table(store)
    means = {r[columns.index("optimizer.lr")]: r[columns.index("peak_sharpness_mean")] for r in agg}
    assert means == {"2^0/lambda0": 10.5, "2^2/lambda0": None}


def test_a_reader_open_across_the_upgrade_sees_the_marks_written_after_it(tmp_path):
    # a reader (a notebook's Store(path, create=False)) opened on a store from before the mark, and a
    # sweep that upgrades the file meanwhile: the reader kept "no column" from its first read and gave
    # every mark as unknown until it was reopened; it now looks again while it finds none
    store_path = tmp_path / "old.db"
    shutil.copyfile(OLD_STORE, store_path)
    with Store(store_path, create=False) as reader:
        (row,) = reader.lambda0_table()
        assert row["converged"] is None and reader.lambda0_converged("new") is None
        with Store(store_path) as writer:   # opened for writing: gains the column
            writer.put_lambda0("new", 4.0, converged=False)
        assert reader.lambda0_converged("new") is False
        assert {r["key"]: r["converged"] for r in reader.lambda0_table()} == {row["key"]: None, "new": 0}
