"""The public figure functions on inputs with nothing to draw: a ValueError/TypeError naming the
argument, where they drew empty panels (or failed in matplotlib's or NumPy's words) before."""
from __future__ import annotations

import pytest

from catapult.plots import plot_trajectories
from catapult.plots.phase import plot_cell_trajectories

ROWS = [{"step": 0, "train_loss": 2.3, "test_accuracy": 0.1, "lr": 0.1},
        {"step": 1, "train_loss": 1.9, "test_accuracy": 0.2, "lr": 0.1}]


@pytest.mark.parametrize("plot", [plot_trajectories, plot_cell_trajectories])
def test_runs_must_be_a_non_empty_mapping(plot):
    name = plot.__name__
    with pytest.raises(ValueError, match=f"{name}: runs is empty"):
        plot({})
    with pytest.raises(TypeError, match=f"{name}: runs must map a legend label"):
        plot(ROWS)
    fig = plot({"a": ROWS})                      # one run: its two loss points are drawn
    assert any(list(line.get_xdata()) == [0, 1] for line in fig.axes[0].lines)
