"""Results that mislead: ``transfer`` refuses a --series/--panel key the store does not sweep,
and ``plot``, ``transfer`` and ``report`` say how many cells are unfinished and which optimum
rests on incomplete rows."""
from __future__ import annotations

import json
import sqlite3

import pytest

from catapult import config as cfg
from catapult.cli import main
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun


def _store(path):
    config = cfg.validate({"name": "u", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.01, 0.02, 0.04], "model.density": [1.0, 0.5]}})
    run_sweep(config, spec, path, run_fn=FakeRun(diverge_above=10.0), lambda0_fn=lambda c: 2.0, progress="none")
    return path


def _unfinish(path):
    """The two smallest-lr cells at density 0.5 (the best ones: FakeRun's test loss is 0.1 + lr)
    lose their results: one not run yet, one interrupted (running, held by no driver)."""
    conn = sqlite3.connect(path, isolation_level=None)
    ids = [r[0] for r in conn.execute("SELECT id, swept_json FROM cells ORDER BY id")
           if json.loads(r[1])["model.density"] == 0.5][:2]
    blank = "test_loss = NULL, test_accuracy = NULL, train_loss = NULL, best_test_loss = NULL"
    conn.execute(f"UPDATE cells SET status = 'pending', {blank} WHERE id = ?", (ids[0],))
    conn.execute(f"UPDATE cells SET status = 'running', {blank} WHERE id = ?", (ids[1],))
    conn.close()


@pytest.mark.parametrize("option", ["--series", "--panel"])
def test_transfer_refuses_a_series_or_panel_key_the_store_does_not_sweep(tmp_path, capsys, option):
    store = _store(tmp_path / "s.db")
    png = tmp_path / "t.png"
    assert main(["transfer", str(store), option, "model.widht", "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert f"{option} 'model.widht' is not a swept key" in err and "model.density" in err
    assert not png.exists()


def test_transfer_still_defaults_to_the_swept_keys(tmp_path, capsys):
    store = _store(tmp_path / "s.db")
    assert main(["transfer", str(store), "--out", str(tmp_path / "t.png"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["series"] == "model.density" and summary["panel"] is None and summary["unfinished_cells"] == 0


def test_plot_transfer_and_report_say_how_many_cells_are_unfinished(tmp_path, capsys):
    store = _store(tmp_path / "s.db")
    _unfinish(store)
    assert main(["plot", str(store), "--metric", "test_loss", "--y", "model.density",
                 "--out", str(tmp_path / "p.png")]) == 0
    err = capsys.readouterr().err
    assert "2 of 6 cells are unfinished" in err and "rests on incomplete rows" in err
    assert "(optimizer.lr=0.01, model.density=1)" in err  # the optimum, among finished cells only

    assert main(["transfer", str(store), "--out", str(tmp_path / "t.png"), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["unfinished_cells"] == 2
    assert summary["incomplete_optima"] == [{"panel": "all", "series": "0.5", "unfinished": 2}]
    assert summary["optima"]["all"]["0.5"]["x"] == 0.04  # what the finished rows say, flagged above
    assert "2 cells are unfinished" in captured.err and "density=0.5 (2)" in captured.err

    assert main(["transfer", str(store), "--out", str(tmp_path / "t.png")]) == 0
    table = capsys.readouterr().out
    assert "0.04 (0.14)*" in table and "0.01 (0.11) |" in table  # only density 0.5 is starred

    assert main(["report", str(store), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<b>1</b> interrupted" in page and "<b>1</b> pending" in page
    assert page.count("Unfinished:") == 2 and "2 of 6 cells are unfinished" in page


def test_transfer_counts_a_collapsed_cell_as_a_result_not_as_unfinished(tmp_path, capsys):
    # a collapsed run is stored as finished with summary status "collapsed" (Store.record);
    # it has its result, so transfer neither warns about it nor drops its point (as plot does)
    store = _store(tmp_path / "s.db")
    conn = sqlite3.connect(store, isolation_level=None)
    cid, summary = next((i, json.loads(s)) for i, sw, s in
                        conn.execute("SELECT id, swept_json, summary_json FROM cells ORDER BY id")
                        if json.loads(sw) == {"optimizer.lr": 0.01, "model.density": 0.5})
    conn.execute("UPDATE cells SET summary_json = ? WHERE id = ?", (json.dumps({**summary, "status": "collapsed"}), cid))
    conn.close()
    assert main(["transfer", str(store), "--out", str(tmp_path / "t.png"), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["unfinished_cells"] == 0 and summary["incomplete_optima"] == []
    assert "unfinished" not in captured.err
    assert summary["optima"]["all"]["0.5"]["x"] == 0.01  # FakeRun's test loss 0.1 + lr: the collapsed cell's 0.11
