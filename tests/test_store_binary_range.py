"""A store made by a catapult that counted a range axis start + i*step in binary floating point
(cell 1 of {range: [0.7, 0.9, 0.1]} was 0.7999999999999999) is refused on a rerun, which counts the
range in decimal (0.8): the refusal names the axis and what happened, not "were sweep.grid's keys
listed in another order?"; exit 2, the store left as it was."""
from __future__ import annotations

import hashlib
import json
import sqlite3

from catapult import cli
from tiny_run import tiny_config

KEY = "optimizer.momentum"


def _binary_store(tmp_path):
    """The sweep's store, its cells' and axis's values rewritten as the binary count gave them."""
    config = tmp_path / "sweep.yaml"
    config.write_text(tiny_config("tiny_binary") + "optimizer: {name: sgd, lr: 0.1}\n"
                      f"sweep: {{grid: {{{KEY}: {{range: [0.7, 0.9, 0.1]}}}}}}\n")
    argv = ["sweep", str(config), "--store", str(tmp_path / "s.db"), "--progress", "none", "--threads", "1"]
    assert cli.main(argv) == 0
    old = [0.7 + i * 0.1 for i in range(3)]          # the old code's start + i*step
    assert old[1:] == [0.7999999999999999, 0.8999999999999999]
    conn = sqlite3.connect(tmp_path / "s.db")
    with conn:
        for cell_id, config_json, swept_json in conn.execute("SELECT id, config_json, swept_json FROM cells").fetchall():
            swept, run = json.loads(swept_json), json.loads(config_json)
            assert swept[KEY] == run["optimizer"]["momentum"] == [0.7, 0.8, 0.9][cell_id]   # the decimal count
            swept[KEY] = run["optimizer"]["momentum"] = old[cell_id]
            conn.execute("UPDATE cells SET config_json = ?, swept_json = ? WHERE id = ?",
                         (json.dumps(run), json.dumps(swept), cell_id))
        axes = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'axes_json'").fetchone()[0])
        assert [a["key"] for a in axes] == [KEY] and axes[0]["form"] == "range"
        axes[0]["values"] = old
        conn.execute("UPDATE meta SET value = ? WHERE key = 'axes_json'", (json.dumps(axes),))
    conn.close()
    return argv


def test_a_store_of_a_binary_range_count_is_refused_naming_the_range(tmp_path, capsys):
    argv = _binary_store(tmp_path)
    before = hashlib.md5((tmp_path / "s.db").read_bytes()).hexdigest()
    capsys.readouterr()
    for extra in ([], ["--dry-run"]):
        assert cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert f"the values of the range axis {KEY} differ from this catapult's by float rounding alone" in err
        assert f"cell 1 was {{'{KEY}': 0.7999999999999999}}, is now {{'{KEY}': 0.8}}" in err
        assert "counted ranges in binary floating point" in err
        assert f"{KEY}: [0.7, 0.7999999999999999, 0.8999999999999999]" in err    # the old values, to list
        assert "another order" not in err and "rerun the original config" not in err and "Traceback" not in err
        assert hashlib.md5((tmp_path / "s.db").read_bytes()).hexdigest() == before
