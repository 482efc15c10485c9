"""Rules of :mod:`catapult.plots.transfer` that survived mutation under test_plots_transfer.py /
test_sweep_plot.py, each on hand-made cells or curves: the spread is the sample standard deviation
over seeds, a collapsed run's metric counts, absolute and ``c/lambda0`` learning rates never share
an axis, the drift needs two optima, and a negative optimum has no log2 distance."""
from __future__ import annotations

import math
import statistics

import pytest

from catapult.plots.transfer import TransferCurves, drift, transfer_curves

AXES = [{"key": "optimizer.lr", "values": [0.1, 0.2], "labels": ["0.1", "0.2"]},
        {"key": "seed", "values": [0, 1, 2], "labels": ["0", "1", "2"]}]


def _cell(i, lr, loss, status="finished"):
    return {"id": i, "status": status, "swept": {"optimizer.lr": lr, "seed": i % 3}, "test_loss": loss}


def test_the_spread_is_the_sample_std_and_a_collapsed_run_counts():
    losses = [0.5, 0.75, 1.25]
    cells = [_cell(i, 0.1, v, "collapsed" if i == 2 else "finished") for i, v in enumerate(losses)]
    curves = transfer_curves(cells, AXES, series=None, panel=None)
    (x, mean), = curves.curves[None][None]
    (_, sd, n), = curves.spread[None][None]
    assert (x, n) == (0.1, 3) and mean == pytest.approx(statistics.mean(losses), rel=1e-15, abs=0)
    assert sd == pytest.approx(statistics.stdev(losses), rel=1e-12, abs=0)   # n - 1 in the denominator


def test_absolute_and_relative_learning_rates_share_no_axis():
    cells = [_cell(0, 0.1, 1.0), _cell(1, "2^-1/lambda0", 1.0)]
    with pytest.raises(ValueError, match="mixes absolute learning rates and c/lambda0 ones"):
        transfer_curves(cells, AXES, series=None, panel=None)


def _curves(points_by_series):
    return TransferCurves("test_loss", "model.init_std", "model.width", None, {None: points_by_series})


def test_drift_needs_two_optima_and_a_negative_one_has_no_distance():
    assert math.isnan(drift(_curves({8: [(0.5, 1.0), (1.0, 2.0)]}))[None])     # one series: no drift
    assert drift(_curves({8: [(0.5, 1.0)], 16: [(2.0, 1.0)]}))[None] == 2.0     # 0.5 -> 2: two doublings
    assert math.isnan(drift(_curves({8: [(-0.5, 1.0)], 16: [(2.0, 1.0)]}))[None])
