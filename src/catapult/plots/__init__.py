"""Figures. Each function takes plain metrics (lists of per-step dicts, as in
``RunResult.metrics`` or a ``metrics.csv`` read back) and returns a matplotlib ``Figure``,
saving it when given a path. No pyplot global state is used, so plotting works headless."""
from __future__ import annotations

from catapult.engine.trajectories import plot_run, plot_trajectories
from catapult.plots.spectrum import plot_spectral_density

__all__ = ["plot_run", "plot_trajectories", "plot_spectral_density"]
