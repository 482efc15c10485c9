"""Figure of a spectral density (:func:`catapult.spectral_density`)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_spectral_density"]


def plot_spectral_density(density, path=None, *, title: str | None = None, log: bool = True) -> Figure:
    """Plot ``density.grid`` against ``density.density`` (log scale by default: the bulk near 0
    and the few outliers differ by orders of magnitude) and save to ``path`` when given."""
    fig = Figure(figsize=(5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = density.density
    if log:
        y = y + 1e-12 * max(float(y.max()), 1e-300)  # a log axis cannot show exact zeros
        ax.set_yscale("log")
    ax.plot(density.grid, y, lw=1.2)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(Path(path))
    return fig
