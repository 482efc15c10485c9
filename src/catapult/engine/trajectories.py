"""Fig. 1 of the warmup paper: training loss and sharpness vs step, with the ``2/lr_t`` curve.

Input is one or more runs' metrics: sequences of per-step mappings with keys ``step``,
``train_loss``, ``sharpness`` (``None``/NaN where not measured) and either ``threshold``
(the optimizer's instability threshold at that step, e.g. ``2/lr_t`` for GD) or ``lr``
(then ``2/lr`` is drawn). Runs that log the spectrum (``eig_1 .. eig_k``, ``hessian_trace``:
``eval.spectrum_top_k``, ``eval.trace_matvecs``) get a third panel with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from catapult.analysis import is_finite_number
from catapult.arguments import check_flag
# the kinds from records, not sharpness_rule: that imports torch (2.7 s of `catapult plot` / `report`)
from catapult.engine.records import (EIG_CONVERGED_COLUMN, RADAM_KIND, RADAM_LR_SCALED_KIND,
                                     SHARPNESS_CONVERGED_COLUMN, is_spectrum_column)
from catapult.files import save_figure

Metrics = Sequence[Mapping[str, Any]]

#: The operator each ``eval.sharpness_kind`` measures (the sharpness, ``eig_i`` and
#: ``hessian_trace`` are all of it): panel (b)'s and (c)'s labels.
OPERATORS = {"hessian": "H", "preconditioned": "$P^{-1/2} H P^{-1/2}$", "lr_scaled": "$M^{1/2} H M^{1/2}$",
             RADAM_KIND: "H, then $P^{-1/2} H P^{-1/2}$ once rectified",
             RADAM_LR_SCALED_KIND: "$M^{1/2} H M^{1/2}$, then $P^{-1/2} H P^{-1/2}$ once rectified"}
#: Panel (b)'s label per kind (``lambda_max(P^-1 H)`` is ``lambda_max(P^-1/2 H P^-1/2)``).
SHARPNESS_LABELS = {"hessian": "sharpness  $\\lambda_{max}(H)$",
                    "preconditioned": "pre-conditioned sharpness  $\\lambda_{max}(P^{-1}H)$",
                    "lr_scaled": "lr-scaled sharpness  $\\lambda_{max}(M H)$",
                    RADAM_KIND: "$\\lambda_{max}(H)$, then $\\lambda_{max}(P^{-1}H)$ once rectified",
                    RADAM_LR_SCALED_KIND: "$\\lambda_{max}(M H)$, then $\\lambda_{max}(P^{-1}H)$ once rectified"}


def _series(metrics: Metrics, key: str, positive: bool = True) -> tuple[list[float], list[float]]:
    """(steps, values) for rows where ``key`` holds a finite (and, for log axes, positive) number."""
    xs, ys = [], []
    for row in metrics:
        y = row.get(key)
        if is_finite_number(y) and (not positive or y > 0):
            xs.append(row["step"])
            ys.append(float(y))
    return xs, ys


def _threshold_series(metrics: Metrics) -> tuple[list[float], list[float]]:
    if any(is_finite_number(row.get("threshold")) for row in metrics):
        return _series(metrics, "threshold")
    xs, ys = [], []
    for row in metrics:
        lr = row.get("lr")
        if is_finite_number(lr) and lr > 0:
            xs.append(row["step"])
            ys.append(2.0 / lr)
    return xs, ys


#: The loss axis shows at most this factor above the largest starting loss; higher points (a
#: diverging run) are drawn at the top edge with a triangle, so one blow-up does not flatten
#: every other curve.
LOSS_CLIP_FACTOR = 100.0


def loss_axis_top(runs: Mapping[str, Metrics], factor: float = LOSS_CLIP_FACTOR) -> float | None:
    """The loss axis' upper limit: ``factor`` x the largest finite initial loss of the runs, or
    the largest finite loss if that is lower (``None`` with no finite loss)."""
    starts = [ys[0] for metrics in runs.values() for ys in [_series(metrics, "train_loss")[1]] if ys]
    highest = [max(ys) for metrics in runs.values() for ys in [_series(metrics, "train_loss")[1]] if ys]
    if not starts:
        return None
    return min(factor * max(starts), max(highest)) * 1.5


def plot_trajectories(
    runs: Mapping[str, Metrics],
    path: str | Path | BinaryIO | None = None,
    *,
    title: str | None = None,
    threshold_label: str = "2/lr_t",
    statuses: Mapping[str, str] | None = None,
    preconditioned: bool = False,
    kind: str | None = None,
) -> Figure:
    """Two panels, log-y: (a) training loss vs step, (b) sharpness vs step with each run's
    instability threshold (``2/lr_t`` for GD) dashed in the run's colour; and (c), where a run
    logged them, its top-k eigenvalues (``eig_1`` darkest) and Hessian trace (right axis).
    ``kind`` (an ``eval.sharpness_kind`` as resolved: :data:`OPERATORS`) names the operator the
    sharpness and spectrum are of; ``preconditioned=True`` is ``kind="preconditioned"``.

    ``runs`` maps a legend label to that run's metrics. ``statuses`` (label -> status) marks
    diverged runs with an ``x`` at their last logged loss. Every catapult
    (:func:`catapult.analysis.detect_catapults`) is marked with a circle at its loss peak and at
    the sharpness before it. The loss axis is clipped at :func:`loss_axis_top`; points above are
    drawn on the top edge as triangles (the legend says "clipped"). A run without sharpness
    measurements says "sharpness not measured" in the legend (and in the panel when no run has
    any). Saved to ``path`` (PNG etc., or an open binary file as PNG) if given.
    """
    from catapult.analysis import detect_catapults

    preconditioned = check_flag("plot_trajectories", "preconditioned", preconditioned)  # "no": preconditioned
    check_runs("plot_trajectories", runs)
    spectra = {label: _spectrum_keys(metrics) for label, metrics in runs.items()}
    with_spectrum = any(eigs or trace for eigs, trace in spectra.values())
    fig = Figure(figsize=(16, 4.2) if with_spectrum else (11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_sharp, *ax_spectrum = fig.subplots(1, 3 if with_spectrum else 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    top = loss_axis_top(runs)
    any_sharpness, any_clipped, any_catapult, any_short = False, False, False, False
    for color, (label, metrics) in zip(colors, runs.items()):
        status = (statuses or {}).get(label)
        sx, sy = _series(metrics, "sharpness")
        legend = label + (f" ({status})" if status in ("diverged", "collapsed") else "")
        if not sx:
            legend += ", sharpness not measured"
        xs, ys = _series(metrics, "train_loss")
        shown = [min(y, top) if top else y for y in ys]
        ax_loss.plot(xs, shown, color=color, lw=1.2, label=legend)
        over = [(x, top) for x, y in zip(xs, ys) if top and y > top]
        if over:
            any_clipped = True
            ax_loss.plot([x for x, _ in over], [y for _, y in over], "^", color=color, ms=6, clip_on=False)
        if status == "diverged" and xs:
            ax_loss.plot(xs[-1], shown[-1], "x", color=color, ms=8)
        for event in detect_catapults(metrics):
            any_catapult = True
            ax_loss.plot(event.peak, min(event.loss_peak, top) if top else event.loss_peak, "o", mfc="none",
                         mec=color, ms=10, mew=1.5)
            if is_finite_number(event.sharpness_before) and event.sharpness_before > 0:
                ax_sharp.plot(event.start, event.sharpness_before, "o", mfc="none", mec=color, ms=10, mew=1.5)
        if sx:
            any_sharpness = True
            ax_sharp.plot(sx, sy, color=color, lw=1.2, marker="." if len(sx) < 60 else None, ms=3, label=legend)
            short = unconverged_points(metrics, "sharpness", SHARPNESS_CONVERGED_COLUMN)
            if short:
                ax_sharp.plot(*zip(*short), ls="none", marker="x", ms=6, color="crimson",
                              label=None if any_short else "not converged")
                any_short = True
        xs, ys = _threshold_series(metrics)
        ax_sharp.plot(xs, ys, color=color, lw=1.0, ls="--", alpha=0.8)
    loss_title = "(a) training loss"
    notes = []
    if any_catapult:
        notes.append("o = catapult")
    if any_clipped:
        notes.append(f"▲ = above {top:.3g}, clipped")
    if notes:
        loss_title += "  (" + ", ".join(notes) + ")"
    ax_loss.set(yscale="log", xlabel="step", ylabel="training loss", title=loss_title)
    if top:
        bottom = min((min(ys) for m in runs.values() for ys in [_series(m, "train_loss")[1]] if ys), default=None)
        if bottom is not None and bottom < top:
            ax_loss.set_ylim(bottom / 1.5, top)
    # Adam family (Fig. 2): the pre-conditioned sharpness lambda_max(P^-1 H) against
    # (2 + 2 b1) / ((1 - b1) lr_t), which is the rows' "threshold" column for those runs.
    kind = kind or ("preconditioned" if preconditioned else "hessian")
    ax_sharp.set(yscale="log", xlabel="step", ylabel=SHARPNESS_LABELS.get(kind, SHARPNESS_LABELS["hessian"]),
                 title=f"(b) sharpness (dashed: {threshold_label})" + (", x: not converged" if any_short else ""))
    if any_short:  # the marks' meaning, beside the runs' colours
        ax_sharp.legend(fontsize=8, loc="best")
    if not any_sharpness:
        ax_sharp.text(0.5, 0.5, "sharpness not measured\n(eval.sharpness_every: 0)", transform=ax_sharp.transAxes,
                      ha="center", va="center", fontsize=11, color="0.35")
    _clip_threshold_axis(ax_sharp, runs)
    if ax_spectrum:
        _spectrum_panel(ax_spectrum[0], runs, spectra, colors, operator=OPERATORS.get(kind, "H"))
    for ax in (ax_loss, ax_sharp, *ax_spectrum):
        ax.grid(True, which="major", alpha=0.3)
    if runs:
        ax_loss.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, make_folder=True, dpi=110)
    return fig


def unconverged_points(metrics: Metrics, column: str, mark: str) -> list[tuple[int, float]]:
    """``(step, value)`` of the rows whose solve of ``column`` stopped short (``mark`` 0, e.g.
    ``sharpness_converged``), where the value can be drawn on a log axis (finite, positive).

    >>> unconverged_points([{"step": 0, "sharpness": 3.0, "sharpness_converged": 0},
    ...                     {"step": 1, "sharpness": 4.0, "sharpness_converged": 1}, {"step": 2}],
    ...                    "sharpness", "sharpness_converged")
    [(0, 3.0)]
    """
    return [(row["step"], float(row[column])) for row in metrics
            if row.get(mark) == 0 and is_finite_number(row.get(column)) and float(row[column]) > 0]


def _spectrum_keys(metrics: Metrics) -> tuple[list[str], bool]:
    """``(["eig_1", ...], has_trace)``: the spectrum columns with at least one finite value."""
    keys = sorted({k for row in metrics for k in row if is_spectrum_column(k) and k != "hessian_trace"},
                  key=lambda k: int(k[4:]))
    eigs = [k for k in keys if _series(metrics, k, positive=False)[0]]
    return eigs, bool(_series(metrics, "hessian_trace", positive=False)[0])


def _spectrum_panel(ax, runs: Mapping[str, Metrics], spectra: Mapping[str, tuple[list[str], bool]],
                    colors: list[str], *, operator: str = "H") -> None:
    """(c): each run's ``eig_i`` in its colour, fading with ``i`` (linear axis: eigenvalues may
    be negative), and its ``hessian_trace`` dashed on a right-hand axis; both of ``operator``
    (:data:`OPERATORS`: the one the engine logs them of under the run's kind). The ``eig_i`` of a
    row whose top-k solve did not converge (``eig_converged`` 0) are crossed out."""
    trace_ax = None
    unconverged = False
    for color, (label, metrics) in zip(colors, runs.items()):
        eigs, has_trace = spectra[label]
        for i, key in enumerate(eigs):
            xs, ys = _series(metrics, key, positive=False)
            ax.plot(xs, ys, color=color, lw=1.2, alpha=max(1.0 - 0.6 * i / max(len(eigs) - 1, 1), 0.3),
                    marker="." if len(xs) < 60 else None, ms=3,
                    label=f"{label}: eig_1 .. eig_{len(eigs)}" if i == 0 and len(runs) > 1 else None)
        short = [(row["step"], float(row[key])) for row in metrics if row.get(EIG_CONVERGED_COLUMN) == 0
                 for key in eigs if is_finite_number(row.get(key))]
        if short:
            ax.plot([x for x, _ in short], [y for _, y in short], ls="none", marker="x", ms=5, color="crimson",
                    label=None if unconverged else "not converged")
            unconverged = True
        if has_trace:
            trace_ax = trace_ax or ax.twinx()
            xs, ys = _series(metrics, "hessian_trace", positive=False)
            trace_ax.plot(xs, ys, color=color if len(runs) > 1 else "0.25", lw=1.0, ls="--")
    top_k = max((len(eigs) for eigs, _ in spectra.values()), default=0)
    title = f"(c) top {top_k} eigenvalues (eig_1 darkest)" if top_k else "(c) spectrum"
    if unconverged:
        title += ", x: not converged"
    ax.set(xlabel="step", ylabel=f"eigenvalue of {operator}" if top_k else "", title=title)
    if trace_ax is not None:
        trace_ax.set_ylabel(f"trace of {operator} (dashed, Hutch++)" if operator != "H"
                            else "Hessian trace (dashed, Hutch++)")
    if (len(runs) > 1 or unconverged) and top_k:
        ax.legend(fontsize=8, loc="best")


def _clip_threshold_axis(ax, runs: Mapping[str, Metrics]) -> None:
    """Keep the y-range on the sharpness data: 2/lr_t starts near infinity during warmup."""
    values = [y for metrics in runs.values() for y in _series(metrics, "sharpness")[1]]
    if not values:
        return
    low, high = min(values), max(values)
    finals = [ys[-1] for metrics in runs.values() for ys in [_threshold_series(metrics)[1]] if ys]
    if finals:
        low, high = min(low, min(finals)), max(high, max(finals))
    # a sharpness near 1e308: 8x it was inf, and a top past 1e308 overflowed the log ticks (10^309)
    ax.set_ylim(low / 2.0, max(high, min(high * 8.0, 1e308)))


def check_runs(owner: str, runs: Any) -> None:
    """Raise unless ``runs`` is a non-empty mapping label -> per-step metrics (``{}`` drew empty
    panels, silently; a bare list of rows raised AttributeError).

    >>> check_runs("plot_trajectories", {})
    Traceback (most recent call last):
    ValueError: plot_trajectories: runs is empty: no run to draw (give {label: metrics rows})
    """
    if not isinstance(runs, Mapping):
        raise TypeError(f"{owner}: runs must map a legend label to a run's metrics rows "
                        f"({{'run': rows}}); got {type(runs).__name__}")
    if not runs:
        raise ValueError(f"{owner}: runs is empty: no run to draw (give {{label: metrics rows}})")


def plot_run(metrics: Metrics, path: str | Path | BinaryIO | None = None, *, title: str | None = None,
             status: str | None = None, threshold_label: str = "2/lr_t",
             preconditioned: bool = False, kind: str | None = None) -> Figure:
    """:func:`plot_trajectories` for a single run (``kind``: its resolved ``eval.sharpness_kind``;
    ``preconditioned``: Adam-family sharpness)."""
    label = title or "run"
    return plot_trajectories({label: metrics}, path, title=title, threshold_label=threshold_label,
                             statuses={label: status} if status else None, preconditioned=preconditioned,
                             kind=kind)
