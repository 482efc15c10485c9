"""Phase diagrams (the warmup paper's Fig. 3/4) and per-cell trajectories from a sweep store.

:func:`phase_grid` reduces a sweep's cells to a 2-D grid over two swept keys (other swept
keys fixed by ``where`` or averaged over, e.g. seeds); :func:`plot_phase_diagram` draws it as
a heatmap: diverged cells hatched ``xx`` on grey, failed cells hatched ``//`` on pink, cells not
run yet blank, the best cell of an objective (not of lambda_0, sharpness or the spectrum)
outlined, tick labels in the config's own units (``2^3/λ0``).
:func:`plot_cell_trajectories` draws chosen cells' training loss, test accuracy and learning
rate (and sharpness when measured) against the step.

Everything uses ``matplotlib.figure.Figure`` directly (no pyplot state): safe headless.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from catapult.analysis import is_finite_number
from catapult.arguments import check_flag
from catapult.engine.records import EIG_CONVERGED_COLUMN, SHARPNESS_CONVERGED_COLUMN, has_final_values, is_spectrum_column
from catapult.files import save_figure
from catapult.sweep.spec import canonical_json
# defined with the store's columns: `catapult plot`'s --metric is checked without this module (numpy)
from catapult.sweep.store_export import mean_std
from catapult.sweep.store_schema import PLOT_METRICS, check_plot_metric
from catapult.writing import printable

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: the grids and tables need none
    from matplotlib.figure import Figure

__all__ = [
    "PhaseGrid",
    "plain_text",
    "value_positions",
    "value_selects",
    "relative_coefficient",
    "phase_grid",
    "unfinished_note",
    "RESULT_STATUSES",
    "plot_phase_diagram",
    "plot_cell_trajectories",
    "default_axes",
    "resolve_axes",
    "default_trajectory_cells",
    "cell_label",
    "higher_is_better",
    "PLOT_METRICS",
    "check_plot_metric",
]

# measures of the set-up, of curvature or of cost, not objectives: no cell of theirs is "best"
_NO_OPTIMUM = ("lambda_0", "lr_target", "sharpness", "peak_sharpness", "wall_time_s")


def higher_is_better(metric: str) -> bool:
    """Accuracies are maximised; losses, sharpness and times minimised."""
    return "accuracy" in metric


@dataclass
class PhaseGrid:
    """A reduced 2-D grid: ``values[i, j]`` at ``y = y_values[i]``, ``x = x_values[j]`` (NaN if
    no finished member), ``status[i][j]`` one of ``ok``, ``partial`` (some members diverged or
    failed, or collapsed to a constant output), ``diverged``, ``failed``, ``missing`` (not run
    yet), ``members[i][j]`` the cell ids reduced into it, ``best`` the ``(i, j)`` of the best
    ``ok`` cell (every member finished: a cell where a seed diverged or collapsed is no optimum),
    ``unfinished`` the ids of matching cells with no result yet (pending, running, interrupted):
    while there are any, ``best`` is the best of the finished cells only; ``averaged`` the swept
    keys other than the axes and ``where`` over which a cell's members differ (seeds, say)."""

    metric: str
    x_key: str
    y_key: str | None
    x_labels: list[str]
    y_labels: list[str]
    x_values: list[Any]
    y_values: list[Any]
    values: np.ndarray
    status: list[list[str]]
    members: list[list[list[int]]]
    best: tuple[int, int] | None
    where: dict
    unfinished: list[int] = field(default_factory=list)
    #: sample std over the cell's seeds/members with a value (NaN for one or none), and how many
    spread: np.ndarray | None = None
    counts: np.ndarray | None = None
    averaged: list[str] = field(default_factory=list)
    #: how many of the values averaged into each cell came from a solve that did not converge (the
    #: cells' ``sharpness_converged`` / ``eig_converged`` 0: :func:`convergence_mark`); None: no marks
    unconverged: np.ndarray | None = None


def convergence_mark(metric: str) -> str | None:
    """The cell key marking whether the solve behind ``metric``'s value converged: ``sharpness``'s
    ``sharpness_converged``, ``peak_sharpness``'s ``peak_sharpness_converged``, an ``eig_<i>``'s
    ``eig_converged``; None for other metrics.

    >>> convergence_mark("sharpness"), convergence_mark("peak_sharpness"), convergence_mark("eig_2")
    ('sharpness_converged', 'peak_sharpness_converged', 'eig_converged')
    >>> convergence_mark("test_loss") is None
    True
    """
    if metric == "sharpness":
        return SHARPNESS_CONVERGED_COLUMN
    if metric == "peak_sharpness":
        return "peak_sharpness_converged"  # the export's column (catapult.sweep.store_export)
    return EIG_CONVERGED_COLUMN if is_spectrum_column(metric) and metric.startswith("eig_") else None


def default_axes(axes: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """``(x, y)``: x = ``optimizer.lr`` if swept else the first axis; y = ``schedule.warmup_steps``
    if swept, else the next axis with more than one value (``None`` for a 1-D sweep). The
    ``seed`` axis (``sweep.seeds``) is never chosen: cells are averaged over it."""
    keys = [a["key"] for a in axes if a["key"] != "seed"] or [a["key"] for a in axes]
    if not keys:
        raise ValueError("the sweep has no swept keys to plot")
    x = "optimizer.lr" if "optimizer.lr" in keys else keys[0]
    # seeds are averaged (mean ± std in the cells), never a default axis
    multi = [a["key"] for a in axes if a["key"] not in (x, "seed") and len(a["values"]) > 1]
    y = "schedule.warmup_steps" if "schedule.warmup_steps" in multi else (multi[0] if multi else None)
    return x, y


def resolve_axes(axes: Sequence[Mapping[str, Any]], x: str | None = None, y: str | None = None) -> tuple[str, str | None]:
    """Fill in whichever of ``x``/``y`` is missing with :func:`default_axes`' choice, never the
    same key twice (``y`` may stay ``None``: a one-row diagram)."""
    dx, dy = default_axes(axes)
    keys = [a["key"] for a in axes if a["key"] != "seed"]
    multi = [a["key"] for a in axes if len(a["values"]) > 1 and a["key"] != "seed"]
    if x is None:
        x = dx if dx != y else next((k for k in keys if k != y), None)
    if y is None:
        y = dy if dy not in (None, x) else next((k for k in multi if k != x), None)
    return x, y


def phase_grid(cells: Sequence[Mapping[str, Any]], axes: Sequence[Mapping[str, Any]], metric: str = "test_accuracy",
               x: str | None = None, y: str | None = None, where: Mapping[str, Any] | None = None) -> PhaseGrid:
    """Reduce store cells (:meth:`catapult.sweep.store.Store.cells`) to a :class:`PhaseGrid`.

    Cells not matching ``where`` (dotted key -> value; a value may also be given as its label
    or its text) are dropped; the remaining cells with the same ``(x, y)`` values are averaged
    over their members that ran to the end (``finished`` and ``collapsed``:
    :func:`~catapult.engine.records.has_final_values`; for lambda_0, measured at step 0, also
    ``diverged`` ones, so it shows everywhere).
    ``best`` is ``None`` for measures rather than objectives (``lambda_0``, ``lr_target``,
    ``sharpness``, ``eig_<i>``, ``hessian_trace``).
    """
    check_plot_metric(metric)
    by_key = {a["key"]: a for a in axes}
    if x is None or y is None:
        x, y = resolve_axes(axes, x, y)
    for name, key in (("x", x), ("y", y)):
        if key is not None and key not in by_key:
            raise ValueError(f"--{name} {key!r} is not a swept key; swept keys: {', '.join(by_key)}")
    if x is None:  # --y took the only swept key the default x may be (seed never is one)
        raise ValueError(f"--y {y!r} leaves no swept key for the x axis; give --x KEY "
                         f"(swept keys: {', '.join(by_key)})")
    if y == x:
        raise ValueError(f"x and y are both {x!r}; choose two different swept keys")
    where = dict(where or {})
    for key in where:
        if key not in by_key:
            raise ValueError(f"where: {key!r} is not a swept key; swept keys: {', '.join(by_key)}")
        if key in (x, y):
            raise ValueError(f"where: {key!r} is already a plot axis")

    positions = {key: value_positions(axes, key, cells) for key in {x, y, *where} if key is not None}

    def matches(cell) -> bool:
        return all(value_selects(by_key[key], positions[key], cell["swept"].get(key), wanted)
                   for key, wanted in where.items())

    xa = by_key[x]
    ya = by_key[y] if y is not None else {"values": [None], "labels": [""]}
    xi = positions[x]
    yi = positions[y] if y is not None else {}
    ny, nx = len(ya["values"]), len(xa["values"])
    members: list[list[list[dict]]] = [[[] for _ in range(nx)] for _ in range(ny)]
    for cell in cells:
        if not matches(cell):
            continue
        j = xi.get(canonical_json(cell["swept"].get(x)))
        i = yi.get(canonical_json(cell["swept"].get(y))) if y is not None else 0
        if i is None or j is None:
            continue
        members[i][j].append(cell)
    if not any(m for row in members for m in row):
        raise ValueError(f"no cells match where={where}")

    values = np.full((ny, nx), np.nan)
    status = [["missing"] * nx for _ in range(ny)]
    spread = np.full((ny, nx), np.nan)
    counts = np.zeros((ny, nx), dtype=int)
    mark = convergence_mark(metric)
    unconverged = None if mark is None else np.zeros((ny, nx), dtype=int)
    # lambda_0 is measured at step 0, so a diverged cell has it too
    def counts_as_result(s: str) -> bool:
        return has_final_values(s) or (s == "diverged" and metric == "lambda_0")

    for i in range(ny):
        for j in range(nx):
            group = members[i][j]
            if not group:
                continue
            states = [c["status"] for c in group]
            taken = [c for c in group if counts_as_result(c["status"]) and is_finite_number(c.get(metric))]
            good = [c[metric] for c in taken]
            if unconverged is not None:
                unconverged[i, j] = sum(c.get(mark) == 0 for c in taken)
            if good:
                # rounded once, as the export's aggregate: np.mean of three seeds at 0.1 gave
                # 0.10000000000000002, annotated "±1.7e-17" for seeds that agree exactly
                mean, sd, _ = mean_std(good)
                values[i, j] = mean
                counts[i, j] = len(good)
                if sd is not None:
                    spread[i, j] = sd
                status[i][j] = "ok" if all(s == "finished" for s in states) else "partial"
            elif "diverged" in states:
                status[i][j] = "diverged"
            elif "failed" in states:
                status[i][j] = "failed"
            elif all(has_final_values(s) for s in states):  # ran to the end, but the metric was not measured
                status[i][j] = "ok" if all(s == "finished" for s in states) else "partial"
    best = None
    candidates = [(i, j) for i in range(ny) for j in range(nx) if np.isfinite(values[i, j]) and status[i][j] == "ok"]
    if candidates and metric not in _NO_OPTIMUM and not is_spectrum_column(metric):
        pick = max if higher_is_better(metric) else min
        best = pick(candidates, key=lambda ij: values[ij])
    unfinished = [c["id"] for row in members for m in row for c in m if c["status"] not in RESULT_STATUSES]
    averaged = [a["key"] for a in axes if a["key"] not in (x, y, *where) and any(
        len({canonical_json(c["swept"].get(a["key"])) for c in m}) > 1 for row in members for m in row)]
    return PhaseGrid(metric, x, y, list(xa["labels"]), list(ya["labels"]), list(xa["values"]), list(ya["values"]),
                     values, status, [[[c["id"] for c in m] for m in row] for row in members], best, where,
                     unfinished, spread, counts, averaged, unconverged)


def value_positions(axes: Sequence[Mapping[str, Any]], key: str, cells: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``{canonical JSON of a value: its index on the axis of key}``, for the axis's values as
    written and for the cells' values as the config normalized them: a cell stores ``5`` and
    ``0.125`` where the grid said ``5.0`` and ``"2^-3"``, and matched on the written value alone
    it fell off the diagram. A cell's index on each axis follows from its id (grid order, first
    axis slowest)."""
    lengths = [len(a["values"]) for a in axes]
    k = next(n for n, a in enumerate(axes) if a["key"] == key)
    stride = math.prod(lengths[k + 1:])
    out = {canonical_json(v): i for i, v in enumerate(axes[k]["values"])}
    for cell in cells:
        if isinstance(cell.get("id"), int) and key in cell["swept"]:
            out.setdefault(canonical_json(cell["swept"][key]), (cell["id"] // stride) % lengths[k])
    return out


def value_selects(axis: Mapping[str, Any], positions: Mapping[str, int], have: Any, wanted: Any) -> bool:
    """Whether a cell's stored value ``have`` on ``axis`` is the ``wanted`` of a ``--where``: the
    same value, its label (``2^-3``), or the value as the grid wrote it (``1`` for a stored
    ``1.0``), that is the same grid position in ``positions`` (:func:`value_positions`).

    >>> axis = {"key": "optimizer.lr", "values": ["2^-3", 1], "labels": ["2^-3", "1"]}
    >>> positions = {'"2^-3"': 0, "1": 1, "0.125": 0, "1.0": 1}
    >>> [value_selects(axis, positions, 0.125, w) for w in ("2^-3", 0.125, 1)], value_selects(axis, positions, 1.0, 1)
    ([True, True, False], True)
    """
    at = positions.get(canonical_json(have))
    label = axis["labels"][at] if at is not None else str(have)
    if (canonical_json(have) == canonical_json(wanted) or str(wanted) in (label, str(have))
            or (at is not None and positions.get(canonical_json(wanted)) == at)):
        return True
    # a learning rate c/lambda0 by its c, written either way: `catapult transfer` prints 0.125/λ0 for
    # the grid's 2^-3/lambda0, and neither that nor 0.125/lambda0 selected it ("no cells match")
    c = relative_coefficient(wanted)
    return c is not None and c == relative_coefficient(have)


def relative_coefficient(value: Any) -> float | None:
    """The ``c`` of a learning rate ``c/lambda0``, also as the figures and tables write it (``c/λ0``);
    ``None`` for anything else.

    >>> relative_coefficient("2^-3/lambda0"), relative_coefficient("0.125/λ0"), relative_coefficient(0.125)
    (0.125, 0.125, None)
    """
    if not isinstance(value, str):
        return None
    from catapult.config import parse_lr

    try:
        lr = parse_lr(value.replace("λ", "lambda").replace("₀", "0"))
    except ValueError:
        return None
    return lr.value if lr.relative else None


#: Statuses of a cell that has its result (or its final failure).
RESULT_STATUSES = ("finished", "diverged", "failed", "collapsed")


def unfinished_note(grid: PhaseGrid) -> str | None:
    """``None`` when every cell of the grid has its result; otherwise how many are unfinished
    and that the optimum rests on incomplete rows (naming it, and its own missing members)."""
    if not grid.unfinished:
        return None
    total = sum(len(m) for row in grid.members for m in row)
    text = f"{len(grid.unfinished)} of {total} cells are unfinished (pending, running or interrupted)"
    if grid.best is None:
        return text + "; no optimum yet"
    i, j = grid.best
    where = f"{grid.x_key}={grid.x_labels[j]}" + (f", {grid.y_key}={grid.y_labels[i]}" if grid.y_key else "")
    own = [cid for cid in grid.members[i][j] if cid in set(grid.unfinished)]
    text += f"; the best {grid.metric} ({where}) rests on incomplete rows: it is the best of the finished cells only"
    if own:
        text += f", and {len(own)} of its own {len(grid.members[i][j])} cells are unfinished"
    return text


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        save_figure(fig, path, make_folder=True, dpi=110)


def _format_value(x: float, metric: str) -> str:
    if "accuracy" in metric:
        return f"{100 * x:.1f}" if abs(x) <= 1.0 else f"{x:.1f}"
    return f"{x:.2g}"


#: The largest magnitude a heatmap cell's colour shows; beyond it a value is drawn as a diverged cell
#: is (a loss or sharpness of 1e306 is one; float32 training overflows at 3.4e38 anyway). 1e100
#: leaves matplotlib's colour-bar ticks room below the float maximum, 1.8e308: a log scale's locator
#: goes two strides of decades past the top (1e300 over 1e-300 overflowed), a linear one sums the range.
DRAWABLE_MAX = 1e100


def plot_phase_diagram(grid: PhaseGrid, path: str | Path | None = None, *, title: str | None = None,
                       annotate: bool | None = None) -> Figure:
    """Heatmap of ``grid.values`` (x: ``grid.x_key``, y: ``grid.y_key``) in the config's units.

    Diverged cells, and values beyond :data:`DRAWABLE_MAX` in magnitude: grey with ``xx`` hatching;
    failed: pink with ``//``; not yet run: blank;
    ``partial`` cells (some members diverged/failed) carry a ``*``; the best cell is outlined
    in red and starred. Losses use a log colour scale when all values are positive. Values are
    written in the cells when the grid is small (accuracy in %).
    """
    if annotate is not None:  # annotate="no" wrote the values
        annotate = check_flag("plot_phase_diagram", "annotate", annotate)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    ny, nx = grid.values.shape
    # 0.75 in a column and 0.55 in a row, up to a size image readers still open (a 200 x 200 grid
    # made a 206-megapixel PNG, which Pillow refuses as a decompression bomb)
    width, height = min(max(4.5, 0.75 * nx + 2.5), _MAX_INCHES[0]), min(max(3.0, 0.55 * ny + 2.0), _MAX_INCHES[1])
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    # a value beyond DRAWABLE_MAX (a test_loss of 1e306, a sharpness of 1.7e308) is off any colour
    # scale: matplotlib's ticks overflowed (an OverflowError out of `catapult plot`); it is drawn as
    # a diverged cell is, and the scale spans the others
    off_scale = np.isfinite(grid.values) & (np.abs(grid.values) > DRAWABLE_MAX)
    drawable = np.isfinite(grid.values) & ~off_scale
    finite = grid.values[drawable]
    use_log = "loss" in grid.metric and finite.size and finite.min() > 0 and finite.max() > 20 * finite.min()
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        if lo == hi:
            lo, hi = (lo * 0.9, hi * 1.1) if lo > 0 else (lo - 1, hi + 1)
        norm = LogNorm(lo, hi) if use_log else Normalize(lo, hi)
    else:
        norm = Normalize(0, 1)
    cmap = "viridis" if higher_is_better(grid.metric) else "viridis_r"
    masked = np.ma.masked_invalid(np.where(drawable, grid.values, np.nan))  # a masked 1e306 still overflowed the norm
    mesh = ax.pcolormesh(np.arange(nx + 1) - 0.5, np.arange(ny + 1) - 0.5, masked, cmap=cmap, norm=norm,
                         edgecolors="white", linewidth=0.5)
    cbar = fig.colorbar(mesh, ax=ax, shrink=0.9)
    cbar.set_label(grid.metric + (" (%)" if "accuracy" in grid.metric and finite.size and finite.max() <= 1 else ""))
    if "accuracy" in grid.metric and finite.size and finite.max() <= 1:
        # Enough decimals that neighbouring ticks differ (a range of one point needs tenths).
        span = 100 * (float(finite.max()) - float(finite.min()))
        digits = 0 if span >= 5 else 1 if span >= 0.5 else 2
        cbar.ax.yaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.{digits}f}")
    # values in the cells while a cell has its full 0.75 x 0.55 in (a capped figure squeezes them)
    fits = 0.75 * nx + 2.5 <= _MAX_INCHES[0] and 0.55 * ny + 2.0 <= _MAX_INCHES[1]
    annotate = (nx * ny <= 256 and fits) if annotate is None else annotate
    styles = {"diverged": ("#bdbdbd", "xx"), "failed": ("#f4c2c2", "//")}
    for i in range(ny):
        for j in range(nx):
            state = "diverged" if off_scale[i, j] and grid.status[i][j] not in styles else grid.status[i][j]
            if state in styles:
                face, hatch = styles[state]
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=face, hatch=hatch, edgecolor="#555555",
                                       linewidth=0.0))
            elif annotate and np.isfinite(grid.values[i, j]):
                v = grid.values[i, j]
                rgba = mesh.cmap(norm(v))
                light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                text = _format_value(v, grid.metric) + ("*" if state == "partial" else "")
                sd = None if grid.spread is None else grid.spread[i, j]
                if sd is not None and np.isfinite(sd):  # seeds: mean and sample std
                    text += "\n±" + _format_value(sd, grid.metric)
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if light else "black")
    short = [] if grid.unconverged is None else [(i, j) for i in range(ny) for j in range(nx)
                                                   if grid.unconverged[i, j] > 0 and np.isfinite(grid.values[i, j])]
    if short:  # a value (or a seed's, in a mean) from a solve cut short of eval.sharpness_tol
        ax.plot([j - 0.33 for _, j in short], [i + 0.3 for i, _ in short], ls="none", marker="x", ms=6,
                mew=1.6, color="crimson")
    if grid.best is not None:
        i, j = grid.best
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.2))
        ax.plot([j + 0.33], [i + 0.3], marker="*", color="red", markersize=9)
    # every column's label while they fit, else every k-th, each at its own column
    xstep = math.ceil(nx / max(1, int((width - 2.5) / 0.4)))
    ystep = math.ceil(ny / max(1, int((height - 2.0) / 0.3)))
    ax.set_xticks(range(0, nx, xstep))
    ax.set_xticklabels([plain_text(t) for t in grid.x_labels[::xstep]], rotation=45 if nx > 6 else 0,
                       ha="right" if nx > 6 else "center")
    ax.set_yticks(range(0, ny, ystep))
    ax.set_yticklabels([plain_text(t) for t in grid.y_labels[::ystep]] if grid.y_key is not None else [""])
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.set_xlabel(_axis_title(grid.x_key))
    if grid.y_key is not None:
        ax.set_ylabel(_axis_title(grid.y_key))
    legend = [Rectangle((0, 0), 1, 1, facecolor=styles["diverged"][0], hatch="xx", edgecolor="#555555", label="diverged")]
    if any(s == "failed" for row in grid.status for s in row):
        legend.append(Rectangle((0, 0), 1, 1, facecolor=styles["failed"][0], hatch="//", edgecolor="#555555",
                                label="failed"))
    if grid.best is not None:
        legend.append(Rectangle((0, 0), 1, 1, fill=False, edgecolor="red", linewidth=2, label="best"))
    if short:
        legend.append(Line2D([], [], linestyle="none", marker="x", color="crimson", mew=1.6,
                             label="from a solve that did not converge"))
    if annotate and any(s == "partial" for row in grid.status for s in row):
        legend.append(Line2D([], [], linestyle="none", label="value* : mean of the finished seeds,\n"
                                                             "collapsed ones counted; others\n"
                                                             "diverged or failed"))
    # below the whole figure, where constrained layout makes room for it: a legend hung under
    # the axes counts as the axes' own, and one wider than them (the value* line) squeezed a
    # narrow grid's axes to nothing ("constrained_layout not applied")
    fig.legend(handles=legend, loc="outside lower center", ncol=len(legend) if len(legend) < 4 else 2, fontsize=7,
               frameon=False)  # all four in one row overfill the narrowest figure, 4.5 in
    where = ", ".join(f"{k}={v}" for k, v in grid.where.items())
    n = 0 if grid.counts is None else int(grid.counts.max())
    others = [key for key in grid.averaged if key != "seed"]  # keys other than the seed are named
    seeds = "" if n <= 1 else (f"\nmean ± std over {', '.join(grid.averaged)} (up to {n} cells)" if others
                               else f"\nmean ± std over up to {n} seeds")
    ax.set_title(plain_text((title or f"{grid.metric}" + (f" ({where})" if where else "")) + seeds), fontsize=10)
    _save(fig, path)
    return fig


#: The largest phase diagram, in inches (4400 x 3300 pixels at the dpi it is saved with).
_MAX_INCHES = (40.0, 30.0)

_AXIS_UNITS = {"optimizer.lr": "lr_trgt", "schedule.warmup_steps": "T_wrm"}


def plain_text(text: Any) -> str:
    """``text`` as matplotlib draws it literally: a ``$`` (a swept path like ``/data/$x$``)
    otherwise starts math mode, and an unknown symbol in it raised ParseFatalException.

    >>> print(plain_text("/tmp/$x$"))
    /tmp/\\$x\\$
    """
    return printable(text).replace("$", r"\$")   # a control character: its escape, not a missing glyph


def _axis_title(key: str) -> str:
    alias = _AXIS_UNITS.get(key)
    return f"{alias}  ({key})" if alias else key


_SHORT = {"optimizer.lr": "lr", "schedule.warmup_steps": "T_wrm"}


def cell_label(cell: Mapping[str, Any], axes: Sequence[Mapping[str, Any]] = ()) -> str:
    """``"cell 7: lr=2^3/λ0, T_wrm=8"``: a cell's swept values in the config's units."""
    labels = {a["key"]: {v: a["labels"][i] for v, i in value_positions(axes, a["key"], [cell]).items()} for a in axes}
    parts = [f"{_SHORT.get(k, k)}={labels.get(k, {}).get(canonical_json(v), v)}" for k, v in cell["swept"].items()]
    return f"cell {cell['id']}: " + ", ".join(parts)


def default_trajectory_cells(cells: Sequence[Mapping[str, Any]], metric: str = "test_accuracy", limit: int = 4) -> list[int]:
    """A few telling cells: the best and the worst of those that ran to the end (finished or
    collapsed: :func:`~catapult.engine.records.has_final_values`), and the first diverged ones
    (at most ``limit``)."""
    finished = [c for c in cells if has_final_values(c["status"]) and is_finite_number(c.get(metric))]
    chosen: list[int] = []
    if finished:
        pick = max if higher_is_better(metric) else min
        other = min if higher_is_better(metric) else max
        chosen.append(pick(finished, key=lambda c: c[metric])["id"])
        worst = other(finished, key=lambda c: c[metric])["id"]
        if worst not in chosen:
            chosen.append(worst)
    for c in cells:
        if len(chosen) >= limit:
            break
        if c["status"] == "diverged" and c["id"] not in chosen:
            chosen.append(c["id"])
    return chosen


def plot_cell_trajectories(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path | None = None, *,
                           statuses: Mapping[str, str] | None = None, title: str | None = None) -> Figure:
    """Training loss (log), test accuracy and learning rate vs step for each labelled run
    (``runs``: label -> per-step metric dicts), plus a sharpness panel (with ``2/lr``-type
    thresholds dashed) when any run measured sharpness. A diverged run ends in an ``x``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from catapult.engine.trajectories import check_runs, unconverged_points

    check_runs("plot_cell_trajectories", runs)
    statuses = dict(statuses or {})
    with_sharpness = any(is_finite_number(r.get("sharpness")) for rows in runs.values() for r in rows)
    panels = ["train_loss", "test_accuracy", "lr"] + (["sharpness"] if with_sharpness else [])
    fig = Figure(figsize=(4.0 * len(panels), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(panels), k + 1) for k in range(len(panels))]
    colors = [f"C{k % 10}" for k in range(len(runs))]
    any_short = False
    for (label, rows), color in zip(runs.items(), colors):
        for ax, key in zip(axes, panels):
            pts = [(r["step"], r[key]) for r in rows if is_finite_number(r.get(key)) and (key == "test_accuracy" or r[key] > 0)]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=color, lw=1.3, label=plain_text(label), marker="." if key == "test_accuracy" else None)
            if key == "train_loss" and statuses.get(label) == "diverged":
                ax.plot([xs[-1]], [ys[-1]], marker="x", color=color, markersize=9, mew=2)
            if key == "sharpness":
                short = unconverged_points(rows, "sharpness", SHARPNESS_CONVERGED_COLUMN)
                if short:  # solves cut short of eval.sharpness_tol: their values are approximate
                    ax.plot(*zip(*short), ls="none", marker="x", ms=6, color="crimson",
                            label=None if any_short else "sharpness not converged")
                    any_short = True
                thr = [(r["step"], r["threshold"]) for r in rows if is_finite_number(r.get("threshold")) and r["threshold"] > 0]
                if thr:
                    tx, ty = zip(*thr)
                    ax.plot(tx, ty, color=color, lw=1.0, ls="--")
    titles = {"train_loss": "training loss", "test_accuracy": "test accuracy", "lr": "learning rate",
              "sharpness": "sharpness (dashed: threshold" + (", x: not converged)" if any_short else ")")}
    for ax, key in zip(axes, panels):
        ax.set_title(titles[key], fontsize=10)
        ax.set_xlabel("step")
        if key in ("train_loss", "sharpness") and ax.lines:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if any_short:  # the crosses' entry, from the sharpness panel
        handles += [h for h, text in zip(*axes[-1].get_legend_handles_labels()) if text == "sharpness not converged"]
        labels.append("sharpness not converged")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 2), fontsize=8, frameon=False)
    if title:
        fig.suptitle(plain_text(title), fontsize=11)
    _save(fig, path)
    return fig
