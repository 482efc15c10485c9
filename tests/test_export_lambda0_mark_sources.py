"""Which lambda_0 mark the export gives a cell (mutation pass 14), per ``cell_marks``' docstring:
for an lr ``c/lambda0`` the mark the store's cache keeps with the value that resolved it, else the
cell's summary's for a lambda_0 its run measured; none for a cell without a lambda_0. Truth: a
fake run whose summaries mark every measured lambda_0 converged, a cache whose marks say not."""
from __future__ import annotations

import csv
import math

import pytest

from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.lambda0 import Lambda0
from catapult.sweep.store import Store, write_csv
from catapult.sweep.store_export import cached_lambda0_mark, cell_marks, peak_sharpness

from sweep_fakes import FakeRun


def _sweep(tmp_path):
    fake = FakeRun()

    def run_fn(config, progress=None):   # a run that measured lambda_0 itself, its solves converged
        result = fake(config, progress)
        result.summary.update(lambda_0=7.0, lambda_0_converged=True)
        return result

    config = cfg.validate({"name": "t", "train": {"steps": 3}, "eval": {"sharpness_every": 0}})
    spec = parse_sweep({"grid": {"optimizer.lr": ["2^-3/lambda0", 0.05]}})
    run_sweep(config, spec, tmp_path / "s.db", run_fn=run_fn, lambda0_fn=lambda c: Lambda0(2.0, False),
              progress="none")
    return tmp_path / "s.db"


def test_a_relative_lr_takes_the_caches_mark_and_an_absolute_one_its_runs(tmp_path):
    path = _sweep(tmp_path)
    with Store(path, create=False) as store:
        write_csv(store, tmp_path / "o.csv")
    with open(tmp_path / "o.csv", newline="") as fh:
        rows = {r["optimizer.lr"]: r for r in csv.DictReader(fh)}
    assert rows["2^-3/lambda0"]["lambda_0_converged"] == "0"   # the cache's, which resolved its lr
    assert rows["0.05"]["lambda_0_converged"] == "1"           # its own run's (the cache resolved nothing)


def test_a_cell_without_a_lambda0_gets_no_mark_from_the_cache(tmp_path):
    path = _sweep(tmp_path)
    with Store(path, create=False) as store:
        cell = store.cells()[0]
        assert cached_lambda0_mark(store, cell) is False
        assert "lambda_0_converged" not in cell_marks(store, {**cell, "lambda_0": None, "summary": None})


@pytest.mark.parametrize("config", [{"optimizer": {"lr": "abc/lambda0x"}}, "text", None])
def test_a_config_the_driver_could_not_read_gives_no_mark(tmp_path, config):
    path = _sweep(tmp_path)
    with Store(path, create=False) as store:
        assert cached_lambda0_mark(store, {"config": config}) is None


@pytest.mark.parametrize("peak", [True, math.nan, math.inf, "41.5"])
def test_a_peak_that_is_no_finite_number_is_left_out(peak):
    assert peak_sharpness({"summary": {"peak_sharpness": peak, "peak_sharpness_converged": True}}) == {}


def test_the_aggregate_averages_the_peaks_mark_over_seeds(tmp_path):
    from catapult.sweep.store_export import aggregate_table

    fake = FakeRun()

    def run_fn(config, progress=None):   # seed 0's peak solve converged, seed 1's did not
        result = fake(config, progress)
        result.summary.update(peak_sharpness=10.0 + config["seed"], peak_sharpness_converged=config["seed"] == 0)
        return result

    config = cfg.validate({"name": "t", "train": {"steps": 3}, "eval": {"sharpness_every": 0}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.05]}, "seeds": [0, 1]})
    run_sweep(config, spec, tmp_path / "s.db", run_fn=run_fn, progress="none")
    with Store(tmp_path / "s.db", create=False) as store:
        columns, (row,) = aggregate_table(store)
    got = {c: row[columns.index(c)] for c in ("peak_sharpness_mean", "peak_sharpness_converged_mean",
                                              "peak_sharpness_converged_n")}
    assert got == {"peak_sharpness_mean": 10.5, "peak_sharpness_converged_mean": 0.5, "peak_sharpness_converged_n": 2}
