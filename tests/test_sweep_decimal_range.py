"""A ``range`` or ``log2`` axis's values are the decimal values the user wrote: ``[0.7, 0.9, 0.1]`` is
0.7, 0.8, 0.9 (start + i*step in binary floating point gave 0.7999999999999999 and 0.8999999999999999,
and ``[-0.3, 0.3, 0.1]`` a middle value of 5.55e-17 for 0), in the cells, the store and its export."""
from __future__ import annotations

import csv

import pytest
import yaml

from catapult.cli import main
from catapult.sweep.spec import parse_sweep


@pytest.mark.parametrize("bounds, truth", [
    ([0.7, 0.9, 0.1], ["0.7", "0.8", "0.9"]),
    ([-0.3, 0.3, 0.1], ["-0.3", "-0.2", "-0.1", "0", "0.1", "0.2", "0.3"]),
    (["1e-1", "3e-1", "1e-1"], ["0.1", "0.2", "0.3"]),
    ({"start": 0.1, "stop": 0.7, "step": 0.2}, ["0.1", "0.3", "0.5", "0.7"]),
])
def test_a_range_axis_holds_the_decimal_values(bounds, truth):
    axis = parse_sweep({"grid": {"optimizer.weight_decay": {"range": bounds}}}).axis("optimizer.weight_decay")
    assert list(axis.values) == [float(t) for t in truth]   # the float nearest each decimal value, exactly


def test_a_log2_axis_has_the_decimal_exponents():
    axis = parse_sweep({"grid": {"optimizer.lr": {"log2": [0, 1, 0.1]}}}).axis("optimizer.lr")
    tenths = [float(f"0.{i}") if i < 10 else 1.0 for i in range(11)]
    assert list(axis.exponents) == tenths
    assert list(axis.values) == [2.0 ** x for x in tenths]


def test_the_store_and_its_export_hold_the_written_values(tmp_path, capsys):
    config = {"name": "dec", "data": {"name": "digits", "n_train": 32, "n_test": 16},
              "model": {"name": "mlp", "width": 8, "depth": 2}, "optimizer": {"name": "sgd", "lr": 0.1},
              "train": {"steps": 1}, "eval": {"sharpness_every": 0},
              "sweep": {"grid": {"optimizer.momentum": {"range": [0.7, 0.9, 0.1]}}}}
    path = tmp_path / "dec.yaml"
    path.write_text(yaml.safe_dump(config))
    store = tmp_path / "dec.db"
    assert main(["sweep", str(path), "--store", str(store), "--progress", "none", "--threads", "1"]) == 0
    out = tmp_path / "dec.csv"
    assert main(["export", str(store), "--out", str(out)]) == 0
    capsys.readouterr()
    with out.open() as f:
        rows = list(csv.DictReader(f))
    column = next(k for k in rows[0] if k.endswith("optimizer.momentum"))
    assert [r[column] for r in rows] == ["0.7", "0.8", "0.9"]
