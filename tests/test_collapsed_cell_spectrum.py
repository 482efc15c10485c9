"""A collapsed run finished (the store keeps it as finished, with its final ``sharpness``), yet the
export dropped the spectrum it logged: ``eig_1 .. eig_k``, ``hessian_trace`` and ``eig_converged``
were blank for it (a digits MLP at lr 1000, seeds 0 and 1: sharpness 0.0125 exported, eig_1 0.0125 and
hessian_trace 0.0833 logged and left out), so ``--aggregate``'s ``eig_1_mean`` was over the other seeds
only (``eig_1_n`` 0 beside ``sharpness_n`` 2), and ``catapult plot --metric eig_1`` and the report
showed no value there. Truth: the rows written, read back with the csv module."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np

from catapult.sweep.store import Store
from catapult.sweep.store_export import write_csv

CONFIG = {"eval": {"sharpness_every": 1, "spectrum_top_k": 2, "trace_matvecs": 4}}
AXES = [{"key": "seed", "values": [0, 1], "labels": ["0", "1"]}]


def _rows(scale: float) -> list[dict]:
    return [{"step": t, "train_loss": 1.0 / (t + 1), "sharpness": scale * (t + 1), "sharpness_converged": 1,
             "eig_1": scale * (t + 1), "eig_2": scale * (t + 1) / 3, "hessian_trace": 7 * scale * (t + 1),
             "eig_converged": t % 2} for t in range(3)]


def _store(tmp_path):
    path = tmp_path / "s.db"
    cells = [SimpleNamespace(id=s, config=CONFIG, swept={"seed": s}) for s in (0, 1)]
    with Store(path) as store:
        store.open_sweep({"spec": 1}, cells, axes=AXES)
        store.record(0, SimpleNamespace(status="finished", metrics=_rows(0.5), summary={"status": "finished"}))
        store.record(1, SimpleNamespace(status="collapsed", metrics=_rows(0.0125), summary={"status": "collapsed"}))
    return path


def test_a_collapsed_cell_exports_the_spectrum_it_logged(tmp_path):
    path = _store(tmp_path)
    with Store(path, create=False) as store:
        write_csv(store, tmp_path / "cells.csv")
        write_csv(store, tmp_path / "seeds.csv", aggregate=True)
    cells = list(csv.DictReader((tmp_path / "cells.csv").open(newline="")))
    assert [c["status"] for c in cells] == ["finished", "collapsed"]
    for cell, scale in zip(cells, (0.5, 0.0125)):
        last = _rows(scale)[-1]
        for column in ("sharpness", "eig_1", "eig_2", "hessian_trace"):
            assert float(cell[column]) == last[column], (cell["status"], column)
        assert int(cell["eig_converged"]) == last["eig_converged"]
    (seeds,) = list(csv.DictReader((tmp_path / "seeds.csv").open(newline="")))
    for column in ("sharpness", "eig_1", "eig_2", "hessian_trace"):
        values = [_rows(s)[-1][column] for s in (0.5, 0.0125)]
        assert int(seeds[f"{column}_n"]) == 2
        assert np.isclose(float(seeds[f"{column}_mean"]), np.mean(values), rtol=1e-15, atol=0)
        assert np.isclose(float(seeds[f"{column}_std"]), np.std(values, ddof=1), rtol=1e-15, atol=0)
