"""The CLI's summaries spell a count of one in the singular (writing.counted): the sweep's
dry-run and final lines said "1 cells", a run's summary "after 1 steps", `catapult spectrum`
"top 1 eigenvalues" and "1 runs", the report "1 cells over"."""
from __future__ import annotations

import pytest
import yaml

from catapult import cli
from catapult import config as cfg
from catapult.engine import run
from catapult.engine.records import format_summary
from catapult.engine.spectrum_study import format_spectrum, measure_spectrum
from test_spectrum_cli import CONFIG

SWEEP = {"name": "one", "seed": 0, "data": {"name": "digits", "n_train": 16, "n_test": 8},
         "model": {"width": 4, "depth": 2}, "train": {"steps": 1}, "eval": {"sharpness_every": 0, "test_every": 0},
         "sweep": {"grid": {"optimizer.lr": [0.1]}}}


def test_a_sweep_of_one_cell_says_one_cell(tmp_path, capsys):
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    store = tmp_path / "s.db"
    assert cli.main(["sweep", str(path), "--dry-run", "--store", str(store)]) == 0
    assert capsys.readouterr().out.startswith("1 cell over optimizer.lr; all valid")
    assert cli.main(["sweep", str(path), "--store", str(store), "--progress", "none", "--threads", "1"]) == 0
    assert "1 cell: 1 finished, 0 diverged, 0 failed" in capsys.readouterr().out
    assert cli.main(["sweep", str(path), "--dry-run", "--store", str(store)]) == 0
    assert "(1 of 1 cell already done)" in capsys.readouterr().out
    assert cli.main(["report", str(store), "--out", str(tmp_path / "r.html")]) == 0
    assert "; 1 cell over " in (tmp_path / "r.html").read_text()


def test_a_run_of_one_step_says_one_step():
    config = cfg.validate({**CONFIG, "train": {"steps": 1}, "eval": {"sharpness_every": 0, "test_every": 0}})
    line = format_summary(run(config, progress="none").summary).splitlines()[0]
    assert " after 1 step (" in line


def test_the_spectrum_summary_spells_one_in_the_singular():
    text = format_spectrum(measure_spectrum(CONFIG, top_k=1, trace_matvecs=0, density_runs=1, density_steps=5))
    assert "  top 1 eigenvalue: " in text and "(SLQ, 1 run x 5 steps)" in text


@pytest.mark.parametrize("n, words", [(0, "0 cells"), (1, "1 cell"), (2, "2 cells")])
def test_counted(n, words):
    from catapult.writing import counted

    assert counted(n, "cell") == words
