"""Figure of a spectral density (:func:`catapult.spectral_density`)."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from catapult.arguments import check_flag
from catapult.files import fit_huge_limits, save_figure

__all__ = ["plot_spectral_density"]


def plot_spectral_density(density, path=None, *, title: str | None = None, log: bool = True,
                          marks: Sequence[float] = (), marks_label: str = "top eigenvalues") -> Figure:
    """Plot ``density.grid`` against ``density.density`` (log scale by default: the bulk near 0
    and the few outliers differ by orders of magnitude) and save to ``path`` when given.

    ``marks``: eigenvalues drawn as dashed vertical lines (e.g. :func:`catapult.top_eigenpairs`'
    values, which the smoothed density blurs), labelled ``marks_label``."""
    log = check_flag("plot_spectral_density", "log", log)  # log="no" drew a log axis
    grid, y = _curve(density)
    marks = _marks(marks)
    fig = Figure(figsize=(5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if log:
        y = y + 1e-12 * max(float(y.max()), 1e-300)  # a log axis cannot show exact zeros
        ax.set_yscale("log")
    ax.plot(grid, y, lw=1.2, label="density (SLQ)")
    fit_huge_limits(fig)  # a grid reaching 1e308: axvline's transform below was singular
    for i, value in enumerate(marks):
        ax.axvline(value, color="C3", ls="--", lw=0.8, label=marks_label if i == 0 else None)
    if marks:
        ax.legend(fontsize=8)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, on any device
        value = value.detach().cpu()
    return np.asarray(value, dtype=float)


def _curve(density) -> tuple[np.ndarray, np.ndarray]:
    # an empty grid raised NumPy's "zero-size array to reduction operation maximum", a grid and a
    # density of different lengths matplotlib's "x and y must have same first dimension"
    if not (hasattr(density, "grid") and hasattr(density, "density")):
        raise TypeError(f"plot_spectral_density: density must have .grid and .density (what "
                        f"catapult.spectral_density returns); got {type(density).__name__}")
    try:
        grid, y = _array(density.grid), _array(density.density)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"plot_spectral_density: density.grid and density.density must be arrays of "
                        f"numbers ({exc})") from None
    if grid.ndim != 1 or grid.shape != y.shape or grid.size == 0:
        raise ValueError(f"plot_spectral_density: density.grid and density.density must be non-empty 1-d "
                         f"arrays of one length; got shapes {grid.shape} and {y.shape}")
    return grid, y


def _marks(marks) -> list[float]:
    # marks="12" drew lines at 1 and 2, silently; marks=3.0 raised "'float' object is not iterable"
    if isinstance(marks, (str, bytes)) or not isinstance(marks, Iterable):
        raise TypeError(f"plot_spectral_density: marks must be a sequence of eigenvalues; got {marks!r}")
    try:
        values = [float(v) for v in (_array(marks).reshape(-1) if hasattr(marks, "detach") else marks)]
    except (TypeError, ValueError):
        raise TypeError(f"plot_spectral_density: marks must be a sequence of eigenvalues; got {marks!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"plot_spectral_density: marks must be finite eigenvalues; got {values}")
    return values
