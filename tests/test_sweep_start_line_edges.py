"""The sweep's start line at its edges (mutation pass 15): no line under --progress none, one cell
spelt in the singular, the cells a sweep copies from a same run counted among those it runs, and
each executor's description of what runs the cells (worker processes, all CPUs). Truth: the
docstrings' words and the grids as written."""
from __future__ import annotations

import io
import sqlite3

import pytest

from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.ensemble import EnsembleExecutor
from catapult.sweep.executors import CellResult, LocalExecutor
from catapult.sweep.ray_executor import RayExecutor
from catapult.sweep.spec import SweepNote

BASE = {"name": "st", "data": {"name": "digits", "n_train": 16, "n_test": 8}, "model": {"width": 4, "depth": 2},
        "train": {"steps": 1}, "eval": {"sharpness_every": 0, "test_every": 0}}


def finished(config, progress="none"):
    return CellResult("finished", [], {"final_test_accuracy": 0.5})


def _lines(tmp_path, base, grid, progress="lines"):
    stream = io.StringIO()
    run_sweep(cfg.validate(base), parse_sweep(grid), tmp_path / "s.db", executor=LocalExecutor(finished, threads=1),
              progress=progress, stream=stream)
    return stream.getvalue().splitlines()


def test_no_start_line_without_progress(tmp_path):
    assert _lines(tmp_path, BASE, {"grid": {"optimizer.lr": [0.1, 0.2]}}, progress="none") == []


def test_one_cell_is_spelt_in_the_singular(tmp_path):
    assert _lines(tmp_path, BASE, {"grid": {"optimizer.lr": [0.1]}})[0].startswith(
        "[st] 1 cell to run (0 of 1 already in the store) on the local executor")


def test_cells_copied_from_a_same_run_are_counted(tmp_path):
    """[rigl, gmp] x density [1.0, 0.5]: both dense cells are one run, run once and copied; 4 cells."""
    base = {"name": "st", "seed": 0, "data": {"name": "shakespeare", "context": 8, "n_train": 32, "n_test": 8},
            "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2, "density": 0.5,
                      "sparsity": {"method": "rigl", "update_every": 1, "end_fraction": 0.75}},
            "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 0.01},
            "train": {"steps": 3, "batch_size": 4}, "eval": {"sharpness_every": 0, "test_every": 0}}
    grid = {"grid": {"model.sparsity.method": ["rigl", "gmp"], "model.density": [1.0, 0.5]}}
    with pytest.warns(SweepNote):
        lines = _lines(tmp_path, base, grid)
    assert lines[0].startswith("[st] 4 cells to run (0 of 4 already in the store)")
    assert len([line for line in lines if " finished" in line]) == 4
    # a copy the store lacks (as after a Ctrl-C between the run and its copy): the resume copies it
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("UPDATE cells SET status = 'pending' WHERE id = 2")
    conn.close()
    with pytest.warns(SweepNote):
        lines = _lines(tmp_path, base, grid)
    assert lines[0].startswith("[st] 1 cell to run (3 of 4 already in the store)")


def test_each_executor_says_what_runs_its_cells():
    assert EnsembleExecutor(workers=2).describe() == (
        "the ensemble executor (cells batched into one model, in 2 worker processes)")
    assert RayExecutor(finished).describe() == (
        "the ray executor (a local Ray instance on all CPUs; 1 cell and 1 CPU a task)")


def test_the_start_line_shows_a_cluster_address_on_one_line_as_ray_reads_it():
    """The address was printed as given: a newline in it split the start line, an IPv6 host:port
    read as a host with colons; now host:port as ray_address_endpoint reads it (IPv6 in brackets,
    ray:// kept), anything else quoted (repr), auto as is."""

    def at(address):
        line = RayExecutor(address=address).describe()
        assert "\n" not in line
        return line.split("(the Ray cluster at ", 1)[1].split(";", 1)[0]

    assert [at(a) for a in ("ray://head:10001", "10.0.0.2:6379", "::1:6379", "auto")] == [
        "ray://head:10001", "10.0.0.2:6379", "[::1]:6379", "auto"]
    assert at("head:6379\n") == "'head:6379\\n'" and at("head :6379") == "'head :6379'"
