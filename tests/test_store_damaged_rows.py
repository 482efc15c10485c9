"""A store whose per-step rows (``metrics.extra_json``) were damaged: every reader that reads
the row (export and report for the mark of a cell's final sharpness, plot for its trajectories)
refuses with exit code 2 naming the cell and step, writes nothing, and leaves the store as it was.

Refused rather than skipped: the row holds the mark of whether the sharpness solve converged;
an export that dropped it would hand out a table whose blanks no one could tell from "not
measured", and every other damaged column of a store is refused the same way
(tests/test_store_damaged.py)."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from catapult import config as cfg
from catapult.cli import main
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeLambda0, FakeRun


class _SharpRun(FakeRun):
    """FakeRun whose rows measured a (converged) sharpness, as ``eval.sharpness_every: 1`` logs."""

    def __call__(self, config, progress=None):
        result = super().__call__(config, progress)
        for row in result.metrics:
            row["sharpness"], row["sharpness_matvecs"], row["sharpness_converged"] = 0.5, 7, 1
        return result


@pytest.fixture(scope="module")
def sharp_store(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("sharp") / "s.db"
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"schedule.warmup_steps": [1, 4]}})
    run_sweep(config, spec, path, run_fn=_SharpRun(diverge_above=1e9), lambda0_fn=FakeLambda0(), progress="none")
    conn = sqlite3.connect(path)
    extras = conn.execute("SELECT extra_json FROM metrics WHERE cell_id = 0 AND step = 3").fetchall()
    conn.close()
    assert extras == [('{"sharpness_converged": 1}',)]   # the row the final sharpness and its mark come from
    return path.read_bytes()


COMMANDS = {
    "export": lambda store, tmp: ["export", str(store), "--out", str(tmp / "o.csv")],
    "export-aggregate": lambda store, tmp: ["export", str(store), "--out", str(tmp / "o.csv"), "--aggregate"],
    "report": lambda store, tmp: ["report", str(store), "--out", str(tmp / "o.html")],
    "plot": lambda store, tmp: ["plot", str(store), "--out", str(tmp / "o.png"), "--cells", "0",
                                "--trajectories-out", str(tmp / "t.png")],
    "plot-sharpness": lambda store, tmp: ["plot", str(store), "--metric", "sharpness", "--out", str(tmp / "o.png"),
                                          "--trajectories-out", str(tmp / "t.png")],
}


@pytest.mark.parametrize("text, words", [("{bad", "is not valid JSON"), ("[1]", "is a JSON list, not a dict")])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_damaged_step_row_is_refused_naming_cell_and_step_and_nothing_is_written(
        tmp_path, capsys, sharp_store, command, text, words):
    store = tmp_path / "s.db"
    store.write_bytes(sharp_store)
    conn = sqlite3.connect(store)
    conn.execute("UPDATE metrics SET extra_json = ? WHERE cell_id = 0 AND step = 3", (text,))
    conn.commit()
    conn.close()
    digest = hashlib.sha256(store.read_bytes()).hexdigest()
    capsys.readouterr()
    assert main(COMMANDS[command](store, tmp_path)) == 2
    captured = capsys.readouterr()
    assert f"s.db is damaged: cell 0 step 3 extra_json {words}" in captured.err, captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    # plot drew its heatmap (and said "wrote o.png") before it read the trajectories' rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"], captured.out
    assert hashlib.sha256(store.read_bytes()).hexdigest() == digest


def test_the_undamaged_store_exports_the_mark(tmp_path, sharp_store):
    # the fixture's store is read whole when no row is damaged: the refusals above are of the damage
    store = tmp_path / "s.db"
    store.write_bytes(sharp_store)
    assert main(["export", str(store), "--out", str(tmp_path / "o.csv")]) == 0
    lines = Path(tmp_path / "o.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[-1] == "sharpness_converged" and [line.split(",")[-1] for line in lines[1:]] == ["1", "1"]
