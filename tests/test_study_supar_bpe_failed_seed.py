"""bench/study_supar_bpe.py: a seed none of whose cells finished has no optimum. Before, argmin
over its all-inf curve named the lowest lr as its optimum (entering the per-seed mean ± std) and
made the seed-mean curve inf everywhere (its optimum the lowest lr too, 'low edge')."""
from __future__ import annotations

import csv
import sys

from bench_module import BENCH, bench_module

COLUMNS = ["cell_id", "model.parametrization", "model.density", "optimizer.lr", "seed", "status", "test_loss"]


def test_a_seed_whose_every_cell_failed_is_left_out_and_named(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    study = bench_module("study_supar_bpe")
    # density 1: seed 0 best at 2^-8, seed 1 at 2^-7 (loss (e - best)^2 + 3), seed 2 diverged everywhere;
    # density 1/4: every seed finished, each best at 2^-7
    rows = []
    for e in (-10, -9, -8, -7, -6):
        rows += [("supar", 1.0, 2.0 ** e, 0, "finished", 3 + (e + 8) ** 2),
                 ("supar", 1.0, 2.0 ** e, 1, "finished", 3 + (e + 7) ** 2),
                 ("supar", 1.0, 2.0 ** e, 2, "diverged", "")]
        rows += [("supar", 0.25, 2.0 ** e, s, "finished", 3 + (e + 7) ** 2 + s / 10) for s in range(3)]
    with open(tmp_path / "a.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows([i, *row] for i, row in enumerate(rows))
    monkeypatch.setattr(sys, "argv", ["study_supar_bpe.py", str(tmp_path / "a.csv")])
    study.main()
    lines = capsys.readouterr().out.splitlines()
    dense = next(line for line in lines if line.startswith("| supar | 1 |")).split(" | ")
    # the seed-mean of seeds 0 and 1: 3 + ((e+8)^2 + (e+7)^2) / 2, lowest (3.5) at 2^-8 and 2^-7 (argmin: the first)
    assert dense[2] == "2^-8" and dense[3] == "3.500 ± 0.707"
    assert dense[4] == "-8, -7 (left out, no finished cell: seed 2)"
    assert dense[5] == "-7.50 ± 0.71"   # mean and sample std of -8 and -7
    assert dense[7] == " |"             # not at an edge of the grid (the last cell is empty)
    quarter = next(line for line in lines if line.startswith("| supar | 0.25 |")).split(" | ")
    assert quarter[2] == "2^-7" and quarter[3] == "3.100 ± 0.100" and quarter[4] == "-7, -7, -7"
    assert quarter[6] == "+1"           # shift from the dense optimum 2^-8
    assert study.optima({0: {1.0: float("inf")}})[3:] == (None, [], [0])
