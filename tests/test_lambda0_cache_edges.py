"""Edges of the lambda_0 cache's convergence mark (mutation pass 14): a ``lambda0_fn`` pair whose
mark is None leaves it unknown (the driver's docstring: a bare number or no mark is unknown, not
'not converged'), and ``missing_added_columns`` counts no column of a table the file does not have
(its docstring). Truth: the docstrings and the SQLite file itself."""
from __future__ import annotations

import sqlite3

from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.lambda0 import Lambda0, lambda0_key
from catapult.sweep.store import Store
from catapult.sweep.store_export import export_table
from catapult.sweep.store_file import missing_added_columns

from sweep_fakes import FakeRun


def test_a_lambda0_fn_pair_without_a_mark_leaves_the_mark_unknown(tmp_path):
    config = cfg.validate({"name": "t", "train": {"steps": 3}, "eval": {"sharpness_every": 0}})
    spec = parse_sweep({"grid": {"optimizer.lr": ["2^-3/lambda0"]}})
    run_sweep(config, spec, tmp_path / "s.db", run_fn=FakeRun(), lambda0_fn=lambda c: Lambda0(2.0, None),
              progress="none")
    with Store(tmp_path / "s.db", create=False) as store:
        (row,) = store.lambda0_table()
        assert row["value"] == 2.0 and row["converged"] is None
        assert store.lambda0_converged(lambda0_key(store.cells()[0]["config"])) is None
        columns, _ = export_table(store)
    assert "lambda_0_converged" not in columns


def test_a_table_the_file_lacks_gains_no_column():
    conn = sqlite3.connect(":memory:")
    try:
        assert missing_added_columns(conn) == []   # no lambda0 table: nothing to add to
        conn.execute("CREATE TABLE lambda0 (key TEXT PRIMARY KEY, value REAL, inputs_json TEXT, measured_at REAL, "
                     "converged INTEGER)")
        assert missing_added_columns(conn) == []
    finally:
        conn.close()


def test_the_report_refuses_a_damaged_mark_as_the_export_does(tmp_path, capsys):
    from catapult.cli import main

    config = cfg.validate({"name": "t", "train": {"steps": 3}, "eval": {"sharpness_every": 0}})
    spec = parse_sweep({"grid": {"optimizer.lr": ["2^-3/lambda0"]}})
    run_sweep(config, spec, tmp_path / "s.db", run_fn=FakeRun(), lambda0_fn=lambda c: Lambda0(2.0, True),
              progress="none")
    conn = sqlite3.connect(tmp_path / "s.db")
    # a cached value no cell's lr used (the export never reads its mark), marked 7: not 1, 0 or empty
    conn.execute("INSERT INTO lambda0(key, value, inputs_json, measured_at, converged) VALUES ('k', 3.0, NULL, 0, 7)")
    conn.commit()
    conn.close()
    assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html")]) == 2
    assert "convergence mark of its cached lambda_0" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
