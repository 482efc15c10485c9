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


def test_plot_spectral_density_checks_density_and_marks():
    """An empty grid raised NumPy's "zero-size array to reduction operation maximum", a plain dict
    AttributeError; marks="12" drew dashed lines at eigenvalues 1 and 2, silently."""
    import numpy as np
    import torch

    from catapult.plots import plot_spectral_density

    class Density:
        def __init__(self, grid, density):
            self.grid, self.density = grid, density

    good = Density(np.linspace(0.0, 2.0, 5), np.ones(5))
    fig = plot_spectral_density(good, marks=torch.tensor([1.5, 0.5]), log=False)
    assert sorted(line.get_xdata()[0] for line in fig.axes[0].lines[1:]) == [0.5, 1.5]
    with pytest.raises(ValueError, match="non-empty 1-d arrays of one length; got shapes \\(0,\\) and \\(0,\\)"):
        plot_spectral_density(Density(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="got shapes \\(3,\\) and \\(4,\\)"):
        plot_spectral_density(Density(np.arange(3.0), np.ones(4)))
    with pytest.raises(TypeError, match="density must have .grid and .density"):
        plot_spectral_density({"grid": [0.0, 1.0], "density": [1.0, 1.0]})
    for marks in ("12", 3.0):
        with pytest.raises(TypeError, match="marks must be a sequence of eigenvalues"):
            plot_spectral_density(good, marks=marks)
    with pytest.raises(ValueError, match="marks must be finite"):
        plot_spectral_density(good, marks=[1.0, float("nan")])


def test_transfer_curves_without_swept_keys_says_so():
    """axes=[] said "--x 'optimizer.lr' is not a swept key; swept keys: " (an empty list)."""
    from catapult.plots.transfer import transfer_curves
    with pytest.raises(ValueError, match="transfer_curves: axes is empty"):
        transfer_curves([], [])
