"""Figure of a spectral density (:func:`catapult.spectral_density`)."""
from __future__ import annotations

from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from catapult.arguments import check_flag
from catapult.files import save_figure

__all__ = ["plot_spectral_density"]


def plot_spectral_density(density, path=None, *, title: str | None = None, log: bool = True,
                          marks: Sequence[float] = (), marks_label: str = "top eigenvalues") -> Figure:
    """Plot ``density.grid`` against ``density.density`` (log scale by default: the bulk near 0
    and the few outliers differ by orders of magnitude) and save to ``path`` when given.

    ``marks``: eigenvalues drawn as dashed vertical lines (e.g. :func:`catapult.top_eigenpairs`'
    values, which the smoothed density blurs), labelled ``marks_label``."""
    log = check_flag("plot_spectral_density", "log", log)  # log="no" drew a log axis
    fig = Figure(figsize=(5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = density.density
    if log:
        y = y + 1e-12 * max(float(y.max()), 1e-300)  # a log axis cannot show exact zeros
        ax.set_yscale("log")
    ax.plot(density.grid, y, lw=1.2, label="density (SLQ)")
    for i, value in enumerate(marks):
        ax.axvline(float(value), color="C3", ls="--", lw=0.8, label=marks_label if i == 0 else None)
    if len(marks):
        ax.legend(fontsize=8)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
