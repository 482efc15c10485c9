"""bench/study_fig4_bpe.py's and bench/study_dynamic_sparsity.py's tables on one seed or too few lrs
(a shrunk rerun): a value of one seed is printed with "(1 seed)", a fit that cannot be made says what
is missing. Before, a sample std of one value printed nan with a NumPy warning, the fitted optimum of
no fit printed nan, and the drift of no fitted optimum raised ValueError. Truth: the values written
into the inputs (a parabola's vertex for the fit), statistics.stdev for two seeds."""
from __future__ import annotations

import csv
import json
import math
import statistics
import warnings

import pytest

from bench_module import bench_module


def _fig4_rows(seeds):
    return [dict(final_norm=True, optimizer="adam", warmup_steps=1, x=14, lr=0.0128, seed=s, status="finished",
                 test_loss=loss, max_train_loss=peak, initial_loss=7.0, seconds=1.0)
            for s, (loss, peak) in zip(seeds, [(5.25, 9.5), (5.75, 8.5)])]


def _table(script, tmp_path, monkeypatch, capsys, rows):
    path = tmp_path / "fig4.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(script, "OUT", path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # NumPy's "Degrees of freedom <= 0" fails the test
        script.table(unigram=5.5)
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| True"))
    return [c.strip() for c in line.split("|")]


def test_fig4_table_of_one_seed_prints_its_values_and_of_two_their_mean_and_std(tmp_path, monkeypatch, capsys):
    script = bench_module("study_fig4_bpe")
    cols = _table(script, tmp_path, monkeypatch, capsys, _fig4_rows([0]))
    assert cols[5:10] == ["5.250 (1 seed)", "9.50 (1 seed)", "1/1", "0/1", "1"]   # 9.5 > 1.2 x 7; 5.25 < 5.5
    cols = _table(script, tmp_path, monkeypatch, capsys, _fig4_rows([0, 1]))
    loss_sd, peak_sd = statistics.stdev([5.25, 5.75]), statistics.stdev([9.5, 8.5])
    assert cols[5:7] == [f"5.500 ± {loss_sd:.3f}", f"9.00 ± {peak_sd:.2f}"]


def _sparsity_csv(path, lrs, loss_of, seeds=(0,), densities=(1.0, 0.5)):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["status", "test_loss", "model.sparsity.method", "model.parametrization",
                                          "model.density", "optimizer.lr", "seed"])
        w.writeheader()
        for d in densities:
            for lr in lrs:
                for s in seeds:
                    w.writerow({"status": "finished", "test_loss": loss_of(d, math.log2(lr), s),
                                "model.sparsity.method": "rigl", "model.parametrization": "sp", "model.density": d,
                                "optimizer.lr": lr, "seed": s})


def _sparsity_lines(tmp_path, monkeypatch, capsys):
    script = bench_module("study_dynamic_sparsity")
    monkeypatch.setattr("sys.argv", ["study", str(tmp_path / "e.csv"), "--out", str(tmp_path / "f.png")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # "Mean of empty slice" fails the test
        script.main()
    out = capsys.readouterr().out
    assert "nan" not in out
    return [l for l in out.splitlines() if l.startswith("| rigl")]


def test_sparsity_table_with_two_lrs_says_no_fit_was_possible(tmp_path, monkeypatch, capsys):
    _sparsity_csv(tmp_path / "e.csv", [2.0 ** -7, 2.0 ** -6], lambda d, x, s: 3.0 + d + (x + 6) ** 2)
    lines = _sparsity_lines(tmp_path, monkeypatch, capsys)
    assert "2^-7: 5.000 (1 seed), 2^-6: 4.000 (1 seed)" in lines[0]    # density 1: 3 + 1 + 1, 3 + 1 + 0
    assert "2^-6; fitted: - (no seed has 3 finite losses" in lines[0] and "2 lrs run" in lines[0]
    assert "fitted: - (a fitted optimum at 0 of 2 densities; the drift needs two)" in lines[2]


@pytest.mark.parametrize("vertex", [-5.5, -5.25])
def test_sparsity_table_of_one_seed_prints_its_fitted_optimum(tmp_path, monkeypatch, capsys, vertex):
    # one seed, an exact parabola in log2 lr with its vertex at `vertex` (density 1) and vertex - 1 (0.5)
    lrs = [2.0 ** -7, 2.0 ** -6, 2.0 ** -5]
    _sparsity_csv(tmp_path / "e.csv", lrs, lambda d, x, s: 1.0 + (x - vertex + (1 - d) * 2) ** 2)
    lines = _sparsity_lines(tmp_path, monkeypatch, capsys)
    assert lines[0].endswith(f"fitted {vertex:.2f} (1 seed) |")
    assert lines[1].endswith(f"fitted {vertex - 1:.2f} (1 seed) |")
    assert lines[2].endswith("fitted, density 0.5 minus 1: -1.00 (1 seed) |")


def test_fig4_a_diverged_runs_peak_is_inf_not_its_last_finite_loss(tmp_path, monkeypatch, capsys):
    """run_cells recorded max(losses): a nan after the first entry is skipped by max(), so a run whose loss went
    from 8.3 to 9.0 to nan (diverged) recorded the peak 9.0 and did not count as spiked (9.0 < 1.2 x 8.3).
    Truth: the run's losses written into a stand-in for catapult.engine.run; inf as study_fig4_search records it."""
    import catapult.engine

    script = bench_module("study_fig4_bpe")

    class Diverged:
        status = "diverged"
        metrics = [{"train_loss": loss, "test_loss": None} for loss in (8.3, 9.0, math.nan)]

    monkeypatch.setattr(catapult.engine, "run", lambda config, progress: Diverged())
    monkeypatch.setattr(script, "OUT", tmp_path / "fig4.jsonl")
    script.run_cells([14], [True], [0], [1])
    rows = [json.loads(line) for line in (tmp_path / "fig4.jsonl").read_text().splitlines()]
    assert [(r["optimizer"], r["max_train_loss"], r["status"]) for r in rows] == [
        ("adam", math.inf, "diverged"), ("gi-adam", math.inf, "diverged")]
    capsys.readouterr()
    script.table(unigram=5.5)
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| True"))
    assert [c.strip() for c in line.split("|")][6:8] == ["inf (1 seed)", "1/1"]   # the peak, spiked
