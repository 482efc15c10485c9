"""bench/study_supar_bpe.py on the exports of sweeps over another axis. ``init_std.csv`` (x
``model.init_std``, no ``optimizer.lr``) and ``width.csv`` (series ``model.width``, no
``model.density``) stopped ``load`` with ``KeyError: 'optimizer.lr'`` / ``'model.density'`` (a
traceback) under the default options. Now a missing column, or a value there that is not a number,
is refused in one line naming the file and the column (exit 2), and the right option reads the file."""
from __future__ import annotations

import csv
import sys

import pytest
from bench_module import BENCH, bench_module

# the header of bench/supar_bpe/init_std.csv, as `catapult export` wrote it
INIT_STD = ["cell_id", "model.parametrization", "model.density", "model.init_std", "seed", "status",
            "train_loss", "train_accuracy", "test_loss", "test_accuracy", "sharpness", "best_train_loss",
            "best_test_loss", "best_test_accuracy", "lambda_0", "lr_target", "steps_completed", "diverged_at",
            "wall_time_s", "error"]


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=INIT_STD)
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"cell_id": i, "status": "finished", "steps_completed": 100, **row})


def _rows():
    # seed s: loss (e - best_s)^2 + 5 with best -5 (seed 0) and -6 (seed 1), over e = -8 .. -3
    return [{"model.parametrization": "supar", "model.density": 0.25, "model.init_std": 2.0 ** e, "seed": s,
             "test_loss": 5 + (e - best) ** 2} for e in range(-8, -2) for s, best in ((0, -5), (1, -6))]


def _run(monkeypatch, study, *argv):
    monkeypatch.setattr(sys, "argv", ["study_supar_bpe.py", *map(str, argv)])
    study.main()


def test_a_file_without_the_x_column_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    study = bench_module("study_supar_bpe")
    _write(tmp_path / "init_std.csv", _rows())
    with pytest.raises(SystemExit) as exc:
        _run(monkeypatch, study, tmp_path / "init_std.csv")
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert f"{tmp_path / 'init_std.csv'}: no column 'optimizer.lr' (--x)" in lines[0]
    assert "model.init_std" in lines[0]
    with pytest.raises(SystemExit) as exc:
        _run(monkeypatch, study, tmp_path / "init_std.csv", "--x", "model.init_std", "--series", "model.width")
    assert exc.value.code == 2
    assert "no column 'model.width' (--series)" in capsys.readouterr().err
    # with its own x the same file reads
    _run(monkeypatch, study, tmp_path / "init_std.csv", "--x", "model.init_std")
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| supar |")).split(" | ")
    # seed mean 5 + ((e+5)^2 + (e+6)^2) / 2: 5.5 at 2^-6 and 2^-5 (argmin: the first); std |(e+5)^2-(e+6)^2|/sqrt 2
    assert row[1] == "0.25" and row[2] == "2^-6" and row[3] == "5.500 ± 0.707"
    assert row[4] == "-5, -6" and row[5] == "-5.50 ± 0.71"


def test_a_value_that_is_not_a_number_is_refused_naming_the_line(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    study = bench_module("study_supar_bpe")
    rows = _rows()
    rows[3]["model.density"] = ""
    _write(tmp_path / "init_std.csv", rows)
    with pytest.raises(SystemExit) as exc:
        _run(monkeypatch, study, tmp_path / "init_std.csv", "--x", "model.init_std")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"study_supar_bpe.py: {tmp_path / 'init_std.csv'}, line 5: model.density is '', not a number"



# the header of bench/supar_bpe/init_std_per_density_width256.csv: lr and init std both vary
PER_DENSITY = INIT_STD[:3] + ["optimizer.lr"] + INIT_STD[3:]


def test_rows_that_vary_a_column_not_named_are_refused(tmp_path, monkeypatch, capsys):
    """Before, the last of two rows with one (panel, density, seed, lr) silently won: here the
    init std 0.05 row (loss 3.9) hid the 0.025 one (3.4), and the table read 3.900 at 2^-10."""
    monkeypatch.syspath_prepend(str(BENCH))
    study = bench_module("study_supar_bpe")
    rows = [{"cell_id": i, "model.parametrization": "sp", "model.density": 1.0, "optimizer.lr": 2.0 ** -10,
             "model.init_std": std, "seed": 0, "status": "finished", "test_loss": loss}
            for i, (std, loss) in enumerate(((0.025, 3.4), (0.05, 3.9)))]
    for name, part in (("a.csv", rows), ("b.csv", rows[:1]), ("c.csv", rows[:1])):
        with open(tmp_path / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=PER_DENSITY)
            writer.writeheader()
            writer.writerows(part)
    with pytest.raises(SystemExit) as exc:
        _run(monkeypatch, study, tmp_path / "a.csv")
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"study_supar_bpe.py: {tmp_path / 'a.csv'}, line 3: model.parametrization sp, model.density 1, seed 0, "
        "optimizer.lr 0.000976562 met again with test_loss 3.9 (was 3.4): the rows vary another column too; "
        "give one sweep's rows"]
    # the same cell with the same loss in two files (a rerun reproduced bit for bit) is one cell
    _run(monkeypatch, study, tmp_path / "b.csv", tmp_path / "c.csv")
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| sp |")).split(" | ")
    assert row[2] == "2^-10" and row[3] == "3.400 ± nan" and row[4] == "-10"
