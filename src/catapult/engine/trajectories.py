"""Fig. 1 of the warmup paper: training loss and sharpness vs step, with the ``2/lr_t`` curve.

Input is one or more runs' metrics: sequences of per-step mappings with keys ``step``,
``train_loss``, ``sharpness`` (``None``/NaN where not measured) and either ``threshold``
(the optimizer's instability threshold at that step, e.g. ``2/lr_t`` for GD) or ``lr``
(then ``2/lr`` is drawn).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Metrics = Sequence[Mapping[str, Any]]


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _series(metrics: Metrics, key: str, positive: bool = True) -> tuple[list[float], list[float]]:
    """(steps, values) for rows where ``key`` holds a finite (and, for log axes, positive) number."""
    xs, ys = [], []
    for row in metrics:
        y = row.get(key)
        if _finite(y) and (not positive or y > 0):
            xs.append(row["step"])
            ys.append(float(y))
    return xs, ys


def _threshold_series(metrics: Metrics) -> tuple[list[float], list[float]]:
    if any(_finite(row.get("threshold")) for row in metrics):
        return _series(metrics, "threshold")
    xs, ys = [], []
    for row in metrics:
        lr = row.get("lr")
        if _finite(lr) and lr > 0:
            xs.append(row["step"])
            ys.append(2.0 / lr)
    return xs, ys


def plot_trajectories(
    runs: Mapping[str, Metrics],
    path: str | Path | None = None,
    *,
    title: str | None = None,
    threshold_label: str = "2/lr_t",
    statuses: Mapping[str, str] | None = None,
    preconditioned: bool = False,
) -> Figure:
    """Two panels, log-y: (a) training loss vs step, (b) sharpness vs step with each run's
    instability threshold (``2/lr_t`` for GD) dashed in the run's colour.

    ``runs`` maps a legend label to that run's metrics. ``statuses`` (label -> status) marks
    diverged runs with an ``x`` at their last logged loss. Saved to ``path`` (PNG etc.) if given.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_sharp = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for color, (label, metrics) in zip(colors, runs.items()):
        status = (statuses or {}).get(label)
        legend = label + (" (diverged)" if status == "diverged" else "")
        xs, ys = _series(metrics, "train_loss")
        ax_loss.plot(xs, ys, color=color, lw=1.2, label=legend)
        if status == "diverged" and xs:
            ax_loss.plot(xs[-1], ys[-1], "x", color=color, ms=8)
        xs, ys = _series(metrics, "sharpness")
        ax_sharp.plot(xs, ys, color=color, lw=1.2, marker="." if len(xs) < 60 else None, ms=3, label=legend)
        xs, ys = _threshold_series(metrics)
        ax_sharp.plot(xs, ys, color=color, lw=1.0, ls="--", alpha=0.8)
    ax_loss.set(yscale="log", xlabel="step", ylabel="training loss", title="(a) loss")
    # Adam family (Fig. 2): the pre-conditioned sharpness lambda_max(P^-1 H) against
    # (2 + 2 b1) / ((1 - b1) lr_t), which is the rows' "threshold" column for those runs.
    ylabel = ("pre-conditioned sharpness  $\\lambda_{max}(P^{-1}H)$" if preconditioned
              else "sharpness  $\\lambda_{max}(H)$")
    ax_sharp.set(yscale="log", xlabel="step", ylabel=ylabel,
                 title=f"(b) sharpness (dashed: {threshold_label})")
    _clip_threshold_axis(ax_sharp, runs)
    for ax in (ax_loss, ax_sharp):
        ax.grid(True, which="major", alpha=0.3)
    if runs:
        ax_loss.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _clip_threshold_axis(ax, runs: Mapping[str, Metrics]) -> None:
    """Keep the y-range on the sharpness data: 2/lr_t starts near infinity during warmup."""
    values = [y for metrics in runs.values() for y in _series(metrics, "sharpness")[1]]
    if not values:
        return
    low, high = min(values), max(values)
    finals = [ys[-1] for metrics in runs.values() for ys in [_threshold_series(metrics)[1]] if ys]
    if finals:
        low, high = min(low, min(finals)), max(high, max(finals))
    ax.set_ylim(low / 2.0, high * 8.0)


def plot_run(metrics: Metrics, path: str | Path | None = None, *, title: str | None = None,
             status: str | None = None, threshold_label: str = "2/lr_t",
             preconditioned: bool = False) -> Figure:
    """:func:`plot_trajectories` for a single run (``preconditioned``: Adam-family sharpness)."""
    label = title or "run"
    return plot_trajectories({label: metrics}, path, title=title, threshold_label=threshold_label,
                             statuses={label: status} if status else None, preconditioned=preconditioned)
