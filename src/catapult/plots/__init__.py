"""Figures. Each function takes plain metrics (lists of per-step dicts, as in
``RunResult.metrics`` or a ``metrics.csv`` read back) and returns a matplotlib ``Figure``,
saving it when given a path. No pyplot global state is used, so plotting works headless."""
from __future__ import annotations

#: Each public name and where it is defined; imported at its first use (:mod:`catapult.lazy`).
_EXPORTS = {
    "plot_run": "catapult.engine.trajectories:plot_run",
    "plot_trajectories": "catapult.engine.trajectories:plot_trajectories",
    "plot_spectral_density": "catapult.plots.spectrum:plot_spectral_density",
}

__all__ = list(_EXPORTS)

from catapult.lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
del lazy_exports
