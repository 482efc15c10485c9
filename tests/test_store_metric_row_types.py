"""A store whose per-step rows (the ``metrics`` table) were hand-edited with values of the wrong
type: the cells table refused them (``cell 0 test_loss 'abc' is not a number``), the metrics rows
did not. ``catapult plot`` then exited 0 with a trajectory figure that was wrong without a word: a
step ``'zz'`` put the x axis on categories (steps 0, 2, 3 evenly spaced, 'zz' last), a train loss
``'zz'`` or a BLOB was left out, and an ``extra_json`` key ``step`` moved its row. Each is now
exit 2 naming the file, the cell and the row, with no figure written."""
from __future__ import annotations

import sqlite3

import pytest

from catapult import cli
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun


@pytest.fixture
def store(tmp_path):
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2]}})
    path = tmp_path / "s.db"
    run_sweep(config, spec, path, run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    return path


def _plot(store, capsys):
    folder = store.parent
    code = cli.main(["plot", str(store), "--metric", "test_loss", "--cells", "0", "--out", str(folder / "h.png"),
                     "--trajectories-out", str(folder / "t.png")])
    return code, capsys.readouterr().err, sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("damage, message", [
    (("UPDATE metrics SET step = 'zz' WHERE cell_id = 0 AND step = 1", ()), "cell 0 metrics row step 'zz' is not an integer"),
    (("UPDATE metrics SET step = 1.5 WHERE cell_id = 0 AND step = 1", ()), "cell 0 metrics row step 1.5 is not an integer"),
    (("UPDATE metrics SET train_loss = 'zz' WHERE cell_id = 0 AND step = 2", ()), "cell 0 step 2 train_loss 'zz' is not a number"),
    (("UPDATE metrics SET lr = ? WHERE cell_id = 0 AND step = 2", (b"\x00",)), "cell 0 step 2 lr b'\\x00' is not a number"),
    (("UPDATE metrics SET extra_json = '{\"step\": 99}' WHERE cell_id = 0 AND step = 2", ()),
     "cell 0 step 2 extra_json holds step, a column of its own"),
])
def test_a_metrics_row_of_the_wrong_type_is_named_and_nothing_is_drawn(store, capsys, damage, message):
    conn = sqlite3.connect(store)
    conn.execute(*damage)
    conn.commit()
    conn.close()
    code, err, files = _plot(store, capsys)
    assert code == 2 and err == f"catapult plot: error: {store} is damaged: {message}\n"
    assert files == ["s.db"]

