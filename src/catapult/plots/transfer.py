"""Hyperparameter-transfer curves (the SμPar paper's Figs. 6, 7, 13, 14) from a sweep store.

A transfer study sweeps one hyperparameter ``x`` (the learning rate, the init std) for each
value of a *series* key (density, width) under each *panel* value (parameterization). For
every (panel, series) :func:`transfer_curves` gives the metric against ``x`` (mean over the
other swept keys, e.g. seeds; a point where any member diverged or failed is NaN: an lr at which
a seed diverges is no optimum, whatever the others did), :func:`optima` the best ``x``
on the grid, and :func:`drift` how far that optimum moves across the series, in log2 units:

    drift(panel) = log2( max_s x*(panel, s) / min_s x*(panel, s) )

and :func:`shift` the largest move away from the first series value's optimum (the dense
model's, say): ``max_s |log2(x*(s) / x*(s_0))|``. A parameterization that transfers keeps
``shift`` within about one grid step (the SμPar
paper: SμPar's optimal lr stays put from density 1 to 1/64 while SP's and muP's drift).
:func:`plot_transfer` draws one panel per parameterization, one line per series value, the
optimum of each marked; :func:`transfer_table` is the Markdown table of the optima.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from catapult.analysis import is_finite_number
from catapult.arguments import check_flag
from catapult.engine.records import has_final_values
from catapult.files import save_figure
from catapult.plots.phase import plain_text, value_positions, value_selects
from catapult.sweep.spec import canonical_json
from catapult.sweep.store_export import mean_std
from catapult.sweep.store_schema import TRANSFER_METRICS

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: the curves and tables need none
    from matplotlib.figure import Figure

__all__ = ["TransferCurves", "transfer_curves", "optima", "drift", "shift", "plot_transfer", "transfer_table",
           "optima_rows", "transfer_summary", "incomplete_optima", "unfinished_note", "edge_optima", "edge_note",
           "TRANSFER_METRICS"]

# TRANSFER_METRICS, the cell metrics a transfer curve can show, is the store schema's: the command
# line lists them without importing the plots


@dataclass
class TransferCurves:
    """``curves[panel][series] = [(x, metric or nan), ...]`` sorted by ``x``; ``x`` numeric: the
    swept value, or for ``optimizer.lr`` swept as ``c/lambda0`` the coefficient ``c``
    (``x_relative``): each seed has its own lambda_0, so its resolved lr is its own, and a grid
    point's seeds are averaged at their common ``c``."""

    metric: str
    x_key: str
    series_key: str | None
    panel_key: str | None
    curves: dict[Any, dict[Any, list[tuple[float, float]]]]
    #: ``{(panel, series): number of matching cells with no result yet}`` (pending, running,
    #: interrupted); a curve listed here, and so its optimum, rests on incomplete rows
    unfinished: dict[tuple[Any, Any], int] = field(default_factory=dict)
    #: ``spread[panel][series] = [(x, sample std over seeds, n), ...]`` parallel to ``curves``
    #: (std NaN for a single seed or a failed point)
    spread: dict[Any, dict[Any, list[tuple[float, float, int]]]] = field(default_factory=dict)
    #: x is the ``c`` of learning rates ``c/lambda0`` (shown as ``c/λ0``)
    x_relative: bool = False
    #: ``{x: the grid's label of it}`` (``2^-3/λ0``, ``2^-5``): how the table writes an optimum, so
    #: that it can be pasted as a ``--where`` value of ``catapult plot``
    x_labels: dict[float, str] = field(default_factory=dict)
    #: ``{(panel, series): (lowest x, highest x)}`` of every matching cell, unfinished ones included:
    #: the grid's ends (:func:`edge_optima`); a curve missing here ends at its own points
    x_ends: dict[tuple[Any, Any], tuple[float, float]] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return "accuracy" in self.metric


def _x_value(cell: Mapping[str, Any], x_key: str) -> tuple[float, bool]:
    """``(x, relative)``: the swept number, or the ``c`` of a learning rate ``c/lambda0`` (the
    grid's own value, the same for every seed; the resolved lr differs per seed's lambda_0, and
    a failed cell has none)."""
    value = cell["swept"].get(x_key)
    if is_finite_number(value):
        return float(value), False
    if x_key == "optimizer.lr" and isinstance(value, str):
        from catapult.config import parse_lr

        try:
            lr = parse_lr(value)
        except ValueError:
            pass
        else:
            return lr.value, lr.relative
    raise ValueError(f"cell {cell['id']}: {x_key}={value!r} is not a number")


def transfer_curves(cells: Sequence[Mapping[str, Any]], axes: Sequence[Mapping[str, Any]], *,
                    x: str = "optimizer.lr", series: str | None = "model.density",
                    panel: str | None = "model.parametrization", metric: str = "test_loss",
                    where: Mapping[str, Any] | None = None, strict: bool = False) -> TransferCurves:
    """Group store cells (:meth:`catapult.sweep.store.Store.cells`) into transfer curves.

    ``x`` must be a swept key; ``series``/``panel`` may be None or a key that is not swept
    (then one series/panel), but with ``strict=True`` (what the command line passes for an
    explicit ``--series``/``--panel``) a key that is not swept is refused too, since it would
    silently merge every curve into one. Cells that do not match ``where`` are dropped;
    cells with equal (panel, series, x) are averaged (collapsed runs count as finished); a
    point where any member diverged or failed is NaN; cells with no result yet are counted in
    :attr:`TransferCurves.unfinished`. Learning rates ``c/lambda0`` are grouped by ``c``.
    """
    strict = check_flag("transfer_curves", "strict", strict)  # strict="no" refused keys that are not swept
    if metric not in TRANSFER_METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(TRANSFER_METRICS)}")
    swept = {a["key"] for a in axes}
    if not swept:  # said "--x 'optimizer.lr' is not a swept key; swept keys: " (an empty list)
        raise ValueError("transfer_curves: axes is empty: the sweep has no swept keys to draw curves over")
    if x not in swept:
        raise ValueError(f"--x {x!r} is not a swept key; swept keys: {', '.join(sorted(swept))}")
    if strict:
        for option, key in (("--series", series), ("--panel", panel)):
            if key is not None and key not in swept:
                raise ValueError(f"{option} {key!r} is not a swept key; swept keys: {', '.join(sorted(swept))}")
        # one key on two roles draws one point per curve (or one curve per panel): no transfer to read
        roles = [(o, k) for o, k in (("--x", x), ("--series", series), ("--panel", panel)) if k is not None]
        for i, (option, key) in enumerate(roles):
            for other, same in roles[i + 1:]:
                if key == same:
                    raise ValueError(f"{option} and {other} are both {key!r}; choose different swept keys")
    series = series if series in swept else None
    panel = panel if panel in swept else None
    for key in (where or {}):
        if key not in swept:
            raise ValueError(f"where: {key!r} is not a swept key; swept keys: {', '.join(sorted(swept))}")
        if key == x:  # one point per curve: its own optimum, so every drift and shift read 0
            raise ValueError(f"where: {key!r} is the x axis (--x); fixing it leaves one point per curve, "
                             f"whose optimum cannot move: leave it out of --where")
    groups: dict[Any, dict[Any, dict[float, list[float]]]] = {}
    unfinished: dict[tuple[Any, Any], int] = {}
    x_ends: dict[tuple[Any, Any], tuple[float, float]] = {}
    kinds: set[bool] = set()
    by_key = {a["key"]: a for a in axes}
    positions = {key: value_positions(axes, key, cells) for key in (where or {})}
    x_positions = value_positions(axes, x, cells)
    x_labels: dict[float, str] = {}
    for cell in cells:
        # as in the phase diagram: the value as stored, as the grid wrote it or its label
        if not all(value_selects(by_key[k], positions[k], cell["swept"].get(k), v) for k, v in (where or {}).items()):
            continue
        p = _hashable(cell["swept"].get(panel)) if panel else None
        s = _hashable(cell["swept"].get(series)) if series else None
        xv, relative = _x_value(cell, x)
        kinds.add(relative)
        lo, hi = x_ends.get((p, s), (xv, xv))
        x_ends[(p, s)] = (min(lo, xv), max(hi, xv))   # the grid's ends: a pending cell's x is on the grid too
        if cell["status"] not in ("finished", "diverged", "failed", "collapsed"):
            # not run yet (or interrupted): no point rather than a failed one, but counted
            unfinished[(p, s)] = unfinished.get((p, s), 0) + 1
            continue
        at = x_positions.get(canonical_json(cell["swept"].get(x)))
        if at is not None:
            x_labels.setdefault(xv, str(by_key[x]["labels"][at]))
        # a collapsed run finished (the store keeps it as finished): its metric counts, as in the phase grid
        value = cell.get(metric) if has_final_values(cell["status"]) else None
        bucket = groups.setdefault(p, {}).setdefault(s, {}).setdefault(xv, [])
        bucket.append(float(value) if is_finite_number(value) else math.nan)
    if not groups and not unfinished:
        raise ValueError(f"no cells match where={dict(where or {})}")
    if len(kinds) > 1:
        raise ValueError(f"{x} mixes absolute learning rates and c/lambda0 ones, which share no axis; "
                         f"pick one kind with --where")
    def ordered(keys, axis):
        if axis is None:
            return list(keys)
        # grid order, a value the config normalized (256.0 -> 256) included: shift() measures from the first
        rank = value_positions(axes, axis, cells)
        return sorted(keys, key=lambda k: rank.get(canonical_json(k), len(rank)))

    curves: dict[Any, dict[Any, list[tuple[float, float]]]] = {}
    spread: dict[Any, dict[Any, list[tuple[float, float, int]]]] = {}
    for p in ordered(groups, panel):
        curves[p], spread[p] = {}, {}
        for s in ordered(groups[p], series):
            points, spreads = [], []
            for xv in sorted(groups[p][s]):
                vals = groups[p][s][xv]
                # A point counts only if every member finished (a diverged seed is a failure).
                ok = all(math.isfinite(v) for v in vals)
                # rounded once, as the export's aggregate (sum / n gave 0.10000000000000002 and a std
                # of 1.7e-17 for three seeds at 0.1)
                mean, sd = mean_std(vals)[:2] if ok else (math.nan, math.nan)
                sd = math.nan if sd is None else sd
                points.append((xv, mean))
                spreads.append((xv, sd, len(vals)))
            curves[p][s] = points
            spread[p][s] = spreads
    return TransferCurves(metric, x, series, panel, curves, unfinished, spread, x_relative=kinds == {True},
                          x_labels=x_labels, x_ends=x_ends)


def incomplete_optima(curves: TransferCurves) -> list[tuple[Any, Any, int]]:
    """``[(panel, series, unfinished cells)]``: the curves whose optimum rests on incomplete
    rows (some of their cells have no result yet), in plotting order."""
    return [(p, s, n) for (p, s), n in curves.unfinished.items() if n]


def unfinished_note(curves: TransferCurves) -> str | None:
    """``None`` when every cell has its result; else how many are unfinished and which
    optima (marked ``*`` in :func:`optima_rows`) rest on incomplete rows."""
    rows = incomplete_optima(curves)
    if not rows:
        return None
    which = "; ".join(f"{_label(curves.panel_key, p)} {_label(curves.series_key, s)} ({n})" for p, s, n in rows)
    return (f"{sum(n for _, _, n in rows)} cells are unfinished (pending, running or interrupted); "
            f"the optima marked * rest on incomplete rows: {which}")


def optima(curves: TransferCurves) -> dict[Any, dict[Any, tuple[float, float] | None]]:
    """``{panel: {series: (best x, its metric)}}`` on the grid (None when every point failed)."""
    pick = max if curves.higher_is_better else min
    out: dict[Any, dict[Any, tuple[float, float] | None]] = {}
    for p, by_series in curves.curves.items():
        out[p] = {}
        for s, points in by_series.items():
            good = [pt for pt in points if math.isfinite(pt[1])]
            out[p][s] = pick(good, key=lambda pt: pt[1]) if good else None
    return out


def edge_optima(curves: TransferCurves) -> list[tuple[Any, Any, str]]:
    """``[(panel, series, "lowest" | "highest")]``: the optima that lie at an end of their curve's
    grid (no cell, finished, failed or not run yet, beyond them: :attr:`TransferCurves.x_ends`; a
    best finished point with pending cells beyond it rests on incomplete rows, :func:`unfinished_note`),
    where the best ``x`` may lie off the grid and
    :func:`drift` and :func:`shift` are no measurement of it (two series both at the top end drift
    0.0, "transfers", whatever their true optima). A failed (diverged) point beyond an optimum
    brackets it, and so does the end of the key's range: a best ``model.density`` of 1 (dense) is
    not named (no grid goes past it; "extend the grid" was advised there).

    Example:
        >>> c = TransferCurves("test_loss", "optimizer.lr", "model.density", None,
        ...                    {"all": {1.0: [(0.1, 2.0), (0.2, 1.5)], 0.5: [(0.1, 2.0), (0.2, 1.0), (0.4, math.nan)]}})
        >>> edge_optima(c)
        [('all', 1.0, 'highest')]
    """
    out = []
    for p, best in optima(curves).items():
        for s, o in best.items():
            xs = [x for x, _ in curves.curves[p][s]]
            lo, hi = curves.x_ends.get((p, s), (xs[0], xs[-1]))
            lo, hi = min(lo, xs[0]), max(hi, xs[-1])
            if o is None or o[0] not in (lo, hi):
                continue
            end = "lowest" if o[0] == lo else "highest"
            if end == "highest" and curves.x_key == "model.density" and hi >= 1.0:
                continue  # the dense model: no grid goes past density 1, so it is the optimum, not a bound
            out.append((p, s, end))
    return out


def edge_note(curves: TransferCurves) -> str | None:
    """``None`` unless some optimum lies at an end of the grid (:func:`edge_optima`); else which,
    and that its drift and shift are bounds at best.

    Example:
        >>> c = TransferCurves("test_loss", "optimizer.lr", "model.density", None, {"all": {1.0: [(0.1, 2.0), (0.2, 1.5)]}})
        >>> edge_note(c)
        'the best optimizer.lr is at an end of the grid for density=1 (highest): the optimum may lie beyond it, and the drift and shift through it are no measurement of it; extend the grid of optimizer.lr'
    """
    rows = edge_optima(curves)
    if not rows:
        return None
    which = "; ".join(f"{_label(curves.panel_key, p) + ' ' if curves.panel_key else ''}{_label(curves.series_key, s)} ({end})"
                      for p, s, end in rows)
    return (f"the best {curves.x_key} is at an end of the grid for {which}: the optimum may lie beyond it, and the "
            f"drift and shift through it are no measurement of it; extend the grid of {curves.x_key}")


def _log2_ratio(a: float, b: float) -> float:
    """``|log2(a / b)|``: 0 for equal values, inf where one is 0 and the other positive (no
    number of doublings reaches 0), NaN where a value is negative."""
    if a == b:
        return 0.0
    if a < 0 or b < 0:
        return math.nan
    return math.inf if a == 0 or b == 0 else abs(math.log2(a / b))


def drift(curves: TransferCurves) -> dict[Any, float]:
    """``{panel: log2(max_s x* / min_s x*)}``: how far the optimum moves across the series, in
    log2 units (grid steps for a log2 grid); NaN when fewer than two series have an optimum;
    ``inf`` when one optimum is 0 and another is not (a weight decay of 0, say)."""
    out = {}
    for p, by_series in optima(curves).items():
        xs = [o[0] for o in by_series.values() if o is not None]
        out[p] = _log2_ratio(max(xs), min(xs)) if len(xs) >= 2 else math.nan
    return out


def shift(curves: TransferCurves) -> dict[Any, float]:
    """``{panel: max_s |log2(x*(s) / x*(s_0))|}``: the largest move of the optimum away from
    the first series value's (e.g. the dense model's), in log2 units; NaN if s_0 has none;
    ``inf`` where one of the two is 0 and the other is not."""
    out = {}
    for p, by_series in optima(curves).items():
        first = next(iter(by_series.values()), None)
        xs = [o[0] for o in by_series.values() if o is not None]
        out[p] = (max(_log2_ratio(x, first[0]) for x in xs) if first is not None and len(xs) >= 2
                  else math.nan)
    return out


def _loss_limits(values: Sequence[float]) -> tuple[float, float]:
    """The y range of loss curves: from the lowest value up to the highest, but at most 4x the
    lowest (far worse learning rates would flatten the curves near the optimum), with a margin
    of 5% of that span on each side, so no point sits on the frame (a flat curve gets one of 5%
    of its value, or of 1 at 0)."""
    lo, hi = min(values), max(values)
    top = min(hi, lo + 3.0 * abs(lo)) if lo > 0 else hi
    span = (top - lo) or abs(lo) or 1.0
    return lo - 0.05 * span, top + 0.05 * span  # inf near float64's max: the caller leaves them


def _x_scale(ax, xs: Sequence[float]) -> None:
    """A log2 x axis, or where some x is 0 or negative (a weight decay of 0), a symmetric log2
    one, linear within the smallest positive |x|: a log axis drops such points, and a curve's
    optimum at 0 with them."""
    if all(x > 0 for x in xs):
        ax.set_xscale("log", base=2)
        return
    positive = [abs(x) for x in xs if x != 0]
    ax.set_xscale("symlog", base=2, linthresh=min(positive) if positive else 1.0)
    low, high = min(xs), max(xs)
    pad = 0.5 * (min(positive) if positive else 1.0)
    ax.set_xlim(low - pad if low <= 0 else low / 1.5, high + pad if high <= 0 else high * 1.5)


def _hashable(value: Any) -> Any:
    """A swept value as a key of the curves: a list (``optimizer.betas``) as a tuple, which
    :func:`_shown` writes as the list again."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _shown(value: Any) -> str:
    """A series or panel value as text: a tuple (a list-valued key, :func:`_hashable`) as the list."""
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _label(key: str | None, value: Any) -> str:
    if key is None:
        return "all"
    short = key.split(".")[-1]
    return f"{short}={_float_text(value)}" if isinstance(value, float) else f"{short}={_shown(value)}"


def _float_text(x: float) -> str:
    """``x`` as ``:g`` writes it where that reads back as ``x``, else its shortest exact text: two
    series 0.1 and 0.1000001 were both headed ``density=0.1`` (``:g`` keeps 6 digits)."""
    return f"{x:g}" if float(f"{x:g}") == x else repr(float(x))


def _x_text(curves: TransferCurves, x: float) -> str:
    """An optimum as the grid wrote it (its label), else its shortest exact text: ``.3g`` printed 2^-5
    as ``0.0312``, which selected nothing when pasted as a ``--where`` value."""
    if x in curves.x_labels:
        return curves.x_labels[x]
    text = _float_text(x)
    return f"{text}/λ0" if curves.x_relative else text


def optima_rows(curves: TransferCurves) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of the optima table as text: one row per panel with the optimal x per
    series value (``"x (metric)"``, ``F`` when every point failed, ``*`` when the curve has
    unfinished cells: its optimum rests on incomplete rows), the drift and the shift."""
    opt, moved, away = optima(curves), drift(curves), shift(curves)
    series_values = list(dict.fromkeys([*(s for by in curves.curves.values() for s in by),
                                        *(s for _, s in curves.unfinished)]))
    first = _label(curves.series_key, series_values[0]) if series_values else "first"
    header = ([curves.panel_key or "panel"] + [_label(curves.series_key, s) for s in series_values]
              + [f"drift of best {curves.x_key} (log2, max/min)", f"largest shift from {first} (log2)"])
    rows = []
    for p in dict.fromkeys([*opt, *(q for q, _ in curves.unfinished)]):
        by_series = opt.get(p, {})

        def text(s):
            star = "*" if curves.unfinished.get((p, s)) else ""
            if by_series.get(s) is None:
                return "unfinished*" if star and not curves.curves.get(p, {}).get(s) else "F" + star
            sd = next((d for xv, d, _ in curves.spread.get(p, {}).get(s, []) if xv == by_series[s][0]), math.nan)
            pm = f" ± {sd:.2g}" if math.isfinite(sd) else ""
            return f"{_x_text(curves, by_series[s][0])} ({by_series[s][1]:.4g}{pm}){star}"

        cells = [text(s) for s in series_values]
        rows.append([_label(None, p) if curves.panel_key is None else _shown(p), *cells, *("-" if math.isnan(v) else f"{v:.1f}"
                                        for v in (moved.get(p, math.nan), away.get(p, math.nan)))])
    return header, rows


def transfer_table(curves: TransferCurves) -> str:
    """Markdown of :func:`optima_rows`."""
    header, rows = optima_rows(curves)
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def transfer_summary(curves: TransferCurves) -> dict:
    """The optima, drifts and shifts as plain JSON-ready data (NaN and inf as None; keys as text,
    as the table writes them: ``"all"`` for the one panel or series when there is no panel or
    series key, not ``"None"``)."""
    def num(v: float):
        return v if math.isfinite(v) else None   # strict JSON has no NaN or Infinity

    def p_(value: Any) -> str:
        return _label(None, value) if curves.panel_key is None else _shown(value)

    def s_(value: Any) -> str:
        return _label(None, value) if curves.series_key is None else _shown(value)

    return {"x": curves.x_key, "x_unit": "c of c/lambda0" if curves.x_relative else "value",
            "series": curves.series_key, "panel": curves.panel_key, "metric": curves.metric,
            "optima": {p_(p): {s_(s): (None if o is None else {"x": o[0], "metric": o[1]}) for s, o in by.items()}
                       for p, by in optima(curves).items()},
            "drift_log2": {p_(p): num(d) for p, d in drift(curves).items()},
            "shift_log2": {p_(p): num(d) for p, d in shift(curves).items()},
            "spread": {p_(p): {s_(s): [{"x": xv, "std": num(sd), "n": n} for xv, sd, n in pts]
                                   for s, pts in by.items()} for p, by in curves.spread.items()},
            "unfinished_cells": sum(curves.unfinished.values()),
            "incomplete_optima": [{"panel": p_(p), "series": s_(s), "unfinished": n}
                                  for p, s, n in incomplete_optima(curves)],
            "edge_optima": [{"panel": p_(p), "series": s_(s), "end": end} for p, s, end in edge_optima(curves)]}


def plot_transfer(curves: TransferCurves, path: str | Path | None = None, *, title: str | None = None) -> Figure:
    """One panel per panel value: metric vs ``x`` (log2 axis), one line per series value
    (darker = later in the sweep's order), each curve's optimum starred, failed points omitted."""
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = list(curves.curves)
    if not panels:  # every cell unfinished (TransferCurves.unfinished): no panel to draw
        raise ValueError(f"plot_transfer: no curves to draw ({sum(curves.unfinished.values())} cells have no "
                         f"result yet)")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.4 * nrows), constrained_layout=True)
    FigureCanvasAgg(fig)
    cmap = mpl.colormaps["viridis"]
    opt = optima(curves)
    finite = [v for by in curves.curves.values() for pts in by.values() for _, v in pts if math.isfinite(v)]
    for index, p in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        series = list(curves.curves[p])
        for j, s in enumerate(series):
            pts = [(xv, v) for xv, v in curves.curves[p][s] if math.isfinite(v)]
            if not pts:
                continue
            color = cmap(j / max(1, len(series) - 1))
            ax.plot([q[0] for q in pts], [q[1] for q in pts], marker="o", ms=3, color=color,
                    label=plain_text(_label(curves.series_key, s)))
            band = [(xv, v, sd) for (xv, v), (_, sd, _n) in zip(curves.curves[p][s], curves.spread.get(p, {}).get(s, []))
                    if math.isfinite(v) and math.isfinite(sd)]
            if band:  # seeds: mean ± sample std
                ax.fill_between([b[0] for b in band], [b[1] - b[2] for b in band], [b[1] + b[2] for b in band],
                                color=color, alpha=0.2, linewidth=0)
            best = opt[p][s]
            if best is not None:
                ax.plot([best[0]], [best[1]], marker="*", ms=11, color=color, markeredgecolor="black")
        _x_scale(ax, [xv for pts in curves.curves[p].values() for xv, _ in pts])
        limits = _loss_limits(finite) if finite and not curves.higher_is_better else None
        if limits is not None and all(math.isfinite(v) for v in limits):  # else save_figure fits them
            ax.set_ylim(*limits)
        ax.set_title(plain_text(_label(curves.panel_key, p) if curves.panel_key else (title or "")))
        ax.set_xlabel(f"{curves.x_key}: c in c/λ0" if curves.x_relative else curves.x_key)
        ax.set_ylabel(curves.metric)
        ax.grid(alpha=0.3)
        if index == 0 and ax.get_legend_handles_labels()[0]:  # every point failed: no lines to name
            ax.legend(fontsize=7)
    if title and curves.panel_key:
        fig.suptitle(plain_text(title))
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig
