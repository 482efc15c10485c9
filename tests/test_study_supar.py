"""bench/study_supar_init_std.py: which lr's curve it reads per density, and the best init std of
each curve and each seed; bench/study_supar_fig3.py: the lr it carries from dense, and exports
that lack cells. Both on exports written in catapult's CSV format with known minima."""
from __future__ import annotations

import csv
import math

import pytest

from bench_module import BENCH, bench_module

COLUMNS = ["cell_id", "model.parametrization", "model.density", "optimizer.lr", "model.init_std", "seed",
           "status", "test_loss"]


def _export(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for i, row in enumerate(rows):
            writer.writerow([i, *row])


def test_curves_their_lr_and_best_std(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    study = bench_module("study_supar_init_std")
    # SP at density 1/4: an lr search at std 0.05 (3 lrs) and a std search at lr 2^-8 (4 stds),
    # loss (log2 std + 4)^2 + seed/100, so the best std is 2^-4 for every seed
    rows = [("sp", 0.25, 2.0 ** e, 0.05, s, "finished", 3.5 + abs(e + 8) + s / 100) for e in (-9, -8, -7)
            for s in range(3)]
    rows += [("sp", 0.25, 2.0 ** -8, 2.0 ** k, s, "finished", 3.0 + (k + 4) ** 2 + s / 100)
             for k in (-6, -5, -4, -3) for s in range(3)]
    # SμPar dense: one std diverged (+inf), best at 2^-5 except seed 2, whose best is 2^-6
    losses = {-6: [3.2, 3.2, 3.0], -5: [3.1, 3.1, 3.1], -4: [math.nan, 3.3, 3.3]}
    rows += [("supar", 1.0, 2.0 ** -7, 2.0 ** k, s, "finished" if math.isfinite(v) else "diverged", v)
             for k, vs in losses.items() for s, v in enumerate(vs)]
    _export(tmp_path / "a.csv", rows)
    data = study.load([str(tmp_path / "a.csv")], "test_loss", axes=study.AXES)
    lr, points = study.curve(data["sp"][0.25])
    assert lr == 2.0 ** -8 and sorted(points) == sorted([2.0 ** k for k in (-6, -5, -4, -3)] + [0.05])
    assert points[2.0 ** -4][0] == 3.01 and study.best_per_seed(points) == [2.0 ** -4] * 3
    lr, points = study.curve(data["supar"][1.0])
    assert points[2.0 ** -4][0] == math.inf and study.best_per_seed(points)[2] == 2.0 ** -6
    study.main([str(tmp_path / "a.csv"), "--out", str(tmp_path / "f.png")])
    out = capsys.readouterr().out
    sp_row = next(line for line in out.splitlines() if line.startswith("| SP | 1/4 | 2^-8 |"))
    assert "**3.010 ± 0.010**" in sp_row and sp_row.endswith("| 0.0625 (0.0625, 0.0625, 0.0625) |")
    supar_row = next(line for line in out.splitlines() if line.startswith("| SμPar | dense | 2^-7 |"))
    assert "**3.100 ± 0.000**" in supar_row and "diverged" in supar_row
    assert supar_row.endswith("| 0.03125 (0.03125, 0.03125, 0.015625) |")
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_fig3_carries_the_dense_lr_and_says_what_an_export_lacks(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    fig3 = bench_module("study_supar_fig3")
    # SP dense best at 2^-9; at 1/4 the dense lr gives 3.3, the grid's best 3.1 at 2^-8;
    # SμPar has no 1/4 cells
    rows = [("sp", 1.0, 2.0 ** e, 0.05, s, "finished", {-10: 3.2, -9: 3.0, -8: 3.4}[e]) for e in (-10, -9, -8)
            for s in range(3)]
    rows += [("sp", 0.25, 2.0 ** e, 0.05, s, "finished", {-9: 3.3, -8: 3.1}[e]) for e in (-9, -8) for s in range(3)]
    rows += [("supar", 1.0, 2.0 ** -7, 0.09, s, "finished", 2.9) for s in range(3)]
    _export(tmp_path / "a.csv", rows)
    fig3.main([str(tmp_path / "a.csv")])
    out = capsys.readouterr().out
    assert "(log2: SP -9, SμPar -7)" in out
    assert "| SP | 3.000 ± 0.000 | 3.300 ± 0.000 |" in out and "| SμPar | 2.900 ± 0.000 | not run |" in out
    assert "| SP | 3.000 ± 0.000 (-9) | 3.100 ± 0.000 (-8) |" in out and "| SμPar | 2.900 ± 0.000 (-7) | not run |" in out
    _export(tmp_path / "b.csv", [r for r in rows if r[1] < 1])   # no dense cells: the lr to carry is unknown
    with pytest.raises(SystemExit) as exit_:
        fig3.main([str(tmp_path / "b.csv")])
    assert exit_.value.code == 2 and "no dense (model.density 1.0) cells for SP" in capsys.readouterr().err
