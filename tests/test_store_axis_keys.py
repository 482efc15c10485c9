"""A hand-edited store whose grid sweeps a key named like one of the export's own columns
(``test_loss``, ``status``, ``cell_id``, the aggregate's ``n_seeds``): ``catapult export`` wrote
two columns of that name, the swept values first, and pandas' ``read_csv(...)["test_loss"]`` gave
the densities for the test losses (exit 0). A swept key is a config key, dotted (``optimizer.lr``)
or top-level (``seed``), and no export column is named so: any other key is a damaged store, exit 2
naming it, nothing written."""
from __future__ import annotations

import json
import sqlite3

import pytest

from catapult import cli
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun


@pytest.mark.parametrize("key", ["test_loss", "status", "cell_id", "n_seeds", "model.", "lr"])
def test_a_grid_key_that_is_no_config_key_is_a_damaged_store(tmp_path, capsys, key):
    config = cfg.validate({"name": "t", "train": {"steps": 2}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2], "model.density": [1.0, 0.5]}})
    store = tmp_path / "s.db"
    run_sweep(config, spec, store, run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    conn = sqlite3.connect(store)
    axes = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'axes_json'").fetchone()[0])
    axes[1]["key"] = key   # model.density renamed, in the grid and in every cell
    conn.execute("UPDATE meta SET value = ? WHERE key = 'axes_json'", (json.dumps(axes),))
    for cell_id, text in conn.execute("SELECT id, swept_json FROM cells").fetchall():
        swept = json.loads(text)
        swept[key] = swept.pop("model.density")
        conn.execute("UPDATE cells SET swept_json = ? WHERE id = ?", (json.dumps(swept), cell_id))
    conn.commit()
    conn.close()
    code = cli.main(["export", str(store), "--aggregate", "--out", str(tmp_path / "t.csv")])
    assert code == 2 and capsys.readouterr().err == (
        f"catapult export: error: {store} is damaged: meta axes_json sweeps {key!r}, which is no config key "
        f"(a dotted name such as optimizer.lr, or seed)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
