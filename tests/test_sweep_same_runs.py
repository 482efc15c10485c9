"""Two grid cells that are one run (the dense reference of a ``[rigl, gmp]`` x density grid:
both run the dense model, as method static) are run once: the result is recorded at both grid
positions, so ``--where model.sparsity.method=gmp`` still finds its dense reference, and a resume
copies what an interrupted sweep had not. Before, the same run trained and was stored twice."""
from __future__ import annotations

import sqlite3

import pytest

from catapult import cli
from catapult.sweep.driver import run_sweep
from catapult.sweep.executors import default_run_fn
from catapult.sweep.spec import expand, load_sweep
from catapult.sweep.store import Store

BASE = ("name: dyn\nseed: 0\ndata: {name: shakespeare, context: 8, n_train: 32, n_test: 8}\n"
        "model: {name: gpt, width: 8, depth: 1, n_heads: 2, density: 0.5,\n"
        "        sparsity: {method: rigl, update_every: 1, end_fraction: 0.75}}\n"
        "loss: cross_entropy\noptimizer: {name: adam, lr: 0.01}\n"
        "train: {steps: 3, batch_size: 4}\neval: {sharpness_every: 0, test_every: 0}\n"
        "sweep:\n  grid:\n    model.sparsity.method: [rigl, gmp]\n    model.density: [1.0, 0.5]\n")


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "dyn.yaml"
    path.write_text(BASE)
    return path


def _counting():
    ran = []

    def run_fn(config, progress="none"):
        ran.append(config["name"])
        return default_run_fn(config, progress=progress)
    return ran, run_fn


def test_the_two_dense_references_are_one_cell_config(grid):
    cells = expand(*load_sweep(grid))
    at = {(c.swept["model.sparsity.method"], c.swept["model.density"]): c for c in cells}
    rigl1, gmp1 = at[("rigl", 1.0)], at[("gmp", 1.0)]
    assert {k: v for k, v in rigl1.config.items() if k != "name"} == {k: v for k, v in gmp1.config.items() if k != "name"}
    assert gmp1.same_as == rigl1.id and rigl1.same_as is None
    assert at[("rigl", 0.5)].same_as is None and at[("gmp", 0.5)].same_as is None


def test_every_cell_that_is_an_earlier_cells_run_names_the_first_of_them(tmp_path):
    # static, rigl and gmp at density 1 are three grid positions of one dense run: both later ones
    # point at the first (a copy of a copy would wait on a cell that is itself copied last)
    path = tmp_path / "three.yaml"
    path.write_text(BASE.replace("[rigl, gmp]", "[static, rigl, gmp]"))
    cells = expand(*load_sweep(path))
    runs = [{k: v for k, v in c.config.items() if k != "name"} for c in cells]
    truth = [next((j for j in range(i) if runs[j] == runs[i]), None) for i in range(len(cells))]
    assert [c.same_as for c in cells] == truth
    assert sorted(i for i, j in enumerate(truth) if j is not None) == [2, 4] and truth[4] == 0


@pytest.mark.parametrize("executor", ["local", "ensemble"])
def test_a_sweep_runs_the_shared_dense_reference_once_and_records_it_at_both_cells(grid, tmp_path, executor):
    ran, run_fn = _counting()
    store = tmp_path / "s.db"
    outcome = run_sweep(*load_sweep(grid), store, executor=executor, run_fn=run_fn, progress="none",
                        executor_options={"threads": 1})
    assert outcome.counts["finished"] == 4 and outcome.ran == 3 and outcome.copied == 1
    assert outcome.same_runs == {2: 0} and 2 not in outcome.ran_ids
    if executor == "local":
        assert sorted(ran) == ["dyn-0", "dyn-1", "dyn-3"]  # cell 2 (gmp at density 1) never trained
    with Store(store, create=False, readonly=True) as s:
        rows = {c["id"]: c for c in s.cells()}
        assert rows[2]["swept"] == {"model.sparsity.method": "gmp", "model.density": 1.0}  # what --where selects
        assert s.metrics(2) == s.metrics(0) and len(s.metrics(0)) == 4
        for column in ("status", "train_loss", "best_train_loss", "steps_completed", "lambda_0", "worker"):
            assert rows[2][column] == rows[0][column], column
        assert rows[2]["summary"]["same_run_as"] == 0 and rows[2]["summary"]["name"] == "dyn-2"
        assert "same_run_as" not in rows[0]["summary"]
    # the export has both grid positions
    out = tmp_path / "cells.csv"
    assert cli.main(["export", str(store), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and lines[1].split(",")[3:] == lines[3].split(",")[3:]


def test_a_resume_copies_the_result_into_a_cell_an_interrupted_sweep_left(grid, tmp_path):
    store = tmp_path / "s.db"
    run_sweep(*load_sweep(grid), store, progress="none")
    with sqlite3.connect(store) as conn:  # as if interrupted before the copy
        conn.execute("UPDATE cells SET status = 'pending', train_loss = NULL, summary_json = NULL WHERE id = 2")
        conn.execute("DELETE FROM metrics WHERE cell_id = 2")
        # (as a grid with a lambda0-relative lr records it: the one run's lambda_0 is the copy's too)
        conn.execute("UPDATE cells SET lambda_0 = 2.5 WHERE id = 0")
    ran, run_fn = _counting()
    outcome = run_sweep(*load_sweep(grid), store, run_fn=run_fn, progress="none")
    assert ran == [] and outcome.mode == "resumed" and outcome.copied == 1 and outcome.counts["finished"] == 4
    with Store(store, create=False, readonly=True) as s:
        assert s.metrics(2) == s.metrics(0) and s.cell(2)["train_loss"] == s.cell(0)["train_loss"]
        assert s.cell(2)["lambda_0"] == 2.5


def test_a_failed_shared_run_fails_both_cells_and_a_rerun_retries_it(grid, tmp_path):
    store = tmp_path / "s.db"

    def broken(config, progress="none"):
        if config["name"] == "dyn-0":
            raise RuntimeError("out of luck")
        return default_run_fn(config, progress=progress)

    outcome = run_sweep(*load_sweep(grid), store, run_fn=broken, progress="none")
    assert outcome.counts["failed"] == 2 and outcome.counts["finished"] == 2
    with Store(store, create=False, readonly=True) as s:
        assert "out of luck" in s.cell(0)["error"]
        assert s.cell(2)["error"].startswith("the same run as cell 0, which failed: ") and "out of luck" in s.cell(2)["error"]
    ran, run_fn = _counting()
    outcome = run_sweep(*load_sweep(grid), store, run_fn=run_fn, progress="none")
    assert ran == ["dyn-0"] and outcome.counts["finished"] == 4


def test_dry_run_and_the_sweep_say_which_cells_are_one_run(grid, tmp_path, capsys):
    assert cli.main(["sweep", str(grid), "--dry-run", "--store", str(tmp_path / "s.db")]) == 0
    out = capsys.readouterr().out
    assert "4 cells over model.sparsity.method, model.density (3 distinct runs" in out
    assert "cell 2: model.sparsity.method=gmp model.density=1.0  (the same run as cell 0" in out
    assert cli.main(["sweep", str(grid), "--store", str(tmp_path / "s.db"), "--progress", "none", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 cells: 4 finished" in out and "(3 run now" in out
    assert "1 cell is the same run as an earlier cell (cell 2 = 0)" in out
