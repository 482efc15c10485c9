"""Sweep axis edges: an inclusive range whose span is a rounding below a whole number of steps,
integer labels written in full, the float range of a log2 axis, and labels found by value."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult.sweep.spec import parse_sweep


def test_an_inclusive_range_keeps_a_stop_that_rounding_puts_just_beyond_it():
    # (0.3 - 0) / 0.1 = 2.9999999999999996 in floating point: four values, 0.3 included
    axis = parse_sweep({"grid": {"optimizer.weight_decay": {"range": [0, 0.3, 0.1]}}}).axis("optimizer.weight_decay")
    assert len(axis) == 4 and axis.values[-1] == pytest.approx(0.3, rel=1e-15, abs=0)


def test_integer_labels_are_written_in_full():
    spec = parse_sweep({"grid": {"train.steps": {"range": [1_000_000, 3_000_000, 1_000_000]},
                                 "model.width": {"log2": [20, 21]}}})
    assert spec.axis("train.steps").labels == ("1000000", "2000000", "3000000")   # not 1e+06
    assert spec.axis("model.width").values == (2 ** 20, 2 ** 21)


@pytest.mark.parametrize("low", [-1023, -1030, -1074.5])
def test_log2_exponents_below_the_normal_floats_are_refused(low):
    # 2^-1023 and below are subnormal: fewer than 53 bits, and 2^-1074.2 rounds to 2^-1074
    with pytest.raises(cfg.ConfigError, match="below the range of a float"):
        parse_sweep({"grid": {"optimizer.lr": {"log2": [low, low + 1]}}})
    assert parse_sweep({"grid": {"optimizer.lr": {"log2": [-1022, -1021]}}}).axis("optimizer.lr").values[0] == 2.0 ** -1022


def test_a_label_is_found_by_value_not_by_identity():
    # values read back (a store's JSON, a config) are equal objects, not the axis's own
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [3, 4]}, "model.width": {"log2": [10, 11]}}})
    assert spec.axis("optimizer.lr").label_of("".join(["2^3", "/lambda0"])) == "2^3/λ0"
    assert spec.axis("model.width").label_of(int("1024")) == "2^10"
