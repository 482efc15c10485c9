"""A self-contained HTML report of a sweep store (``catapult report STORE``).

One page that opens offline: phase diagrams (final test accuracy, test loss and training loss
over the two default swept keys) and the trajectories of a few telling cells, embedded as
base64 PNG ``data:`` URIs; the results table (one row per cell); the lambda_0 values; the
sweep spec. No scripts, no external stylesheets, fonts or images.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from catapult.files import REPORT_MARK, fit_huge_limits
from catapult.writing import counted, printable, write_text_whole

__all__ = ["build_report", "write_report", "figure_to_data_uri"]

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.82em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.text { text-align: left; }
tr.diverged td { background: #eeeeee; color: #777; }
tr.failed td { background: #fde8e8; }
tr.best td { font-weight: bold; background: #fff4d6; }
.figs img { max-width: 100%; margin: 0.5em 0; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.counts span { margin-right: 1.2em; }
.warning { background: #fff4d6; padding: 0.4em 0.8em; }
details { max-width: 40em; white-space: normal; text-align: left; }
"""


def _escape(text: Any) -> str:
    """A store's text as HTML text: markup escaped, and control characters (but newline and tab) as
    their escapes, which HTML does not allow (a NUL or an ESC in a cell's error was a parse error)."""
    return html.escape(printable(text))


def figure_to_data_uri(fig) -> str:
    """A matplotlib Figure as a ``data:image/png;base64,...`` URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fit_huge_limits(fig)
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if "accuracy" in key:
            return f"{100 * value:.2f}%"
        return f"{value:.4g}"
    return _escape(str(value))  # everything from the store is text, never markup


#: The phase diagrams a report draws; ``metric`` (the one whose best cell is marked and whose best and
#: worst cells' trajectories are drawn) is one of them.
REPORT_METRICS = ("test_accuracy", "test_loss", "train_loss")


def build_report(store, *, title: str | None = None, metric: str = "test_accuracy") -> str:
    """The report's HTML text for an open :class:`catapult.sweep.store.Store`; ``metric`` one of
    :data:`REPORT_METRICS` (a ValueError otherwise: ``"accuracy"`` made a report with no best cell and
    only diverged cells' trajectories)."""
    if metric not in REPORT_METRICS:
        raise ValueError(f"report metric must be one of {', '.join(REPORT_METRICS)}; got {metric!r}")
    from catapult.plots.phase import (cell_label, default_axes, default_trajectory_cells, phase_grid,
                                      plot_cell_trajectories, plot_phase_diagram, unfinished_note, value_positions)

    spec = store.spec()
    axes = store.axes()
    cells = store.cells()
    counts = dict.fromkeys(("finished", "diverged", "failed", "interrupted", "running", "pending"), 0)
    for c in cells:  # statuses as the cells carry them ('interrupted' included); store text: escaped below
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    # each value as written in the grid and as the cells store it (2^0 is 1 there, 1.0 here)
    by_label = {a["key"]: {v: a["labels"][i] for v, i in value_positions(axes, a["key"], cells).items()} for a in axes}
    name = title or f"Sweep report: {store.path.name}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{REPORT_MARK}<title>{_escape(name)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{_escape(name)}</h1>"]
    when = _created(store)
    total_time = sum(c["wall_time_s"] or 0.0 for c in cells)
    parts.append(
        f"<p>Store <code>{_escape(str(store.path))}</code>, created {when}; {counted(len(cells), 'cell')} over "
        + ", ".join(f"<code>{_escape(a['key'])}</code> ({len(a['values'])})" for a in axes)
        + f"; {total_time:.1f} s of training in all.</p>"
    )
    parts.append("<p class='counts'>" + "".join(
        f"<span><b>{n}</b> {_escape(str(s))}</span>" for s, n in counts.items() if n) + "</p>")

    # ---- figures
    parts.append("<h2>Phase diagrams</h2><div class='figs'>")
    figures_made = False
    best_id = None
    if axes:
        try:
            x, y = default_axes(axes)
            for m in ("test_accuracy", "test_loss", "train_loss"):
                grid = phase_grid(cells, axes, m, x, y)
                note = unfinished_note(grid) if m == metric else None
                if note:
                    parts.append(f"<p class='warning'><b>Unfinished:</b> {_escape(note)}.</p>")
                if m == metric and grid.best is not None:
                    i, j = grid.best
                    best_id = grid.members[i][j][0] if len(grid.members[i][j]) == 1 else None
                if not np.isfinite(grid.values).any() and not any(
                        s in ("diverged", "failed") for row in grid.status for s in row):
                    continue
                fig = plot_phase_diagram(grid, title=f"final {m}")
                parts.append(f"<img alt='phase diagram of {m}' src='{figure_to_data_uri(fig)}'>")
                figures_made = True
        except ValueError as err:
            parts.append(f"<p>No phase diagram: {_escape(str(err))}</p>")
    if not figures_made:
        parts.append("<p>No finished cells yet.</p>")
    parts.append("</div>")
    parts.extend(_seeds_section(store, axes, by_label))
    parts.extend(_transfer_section(cells, axes))
    chosen = default_trajectory_cells(cells, metric)
    if chosen:
        runs, statuses = {}, {}
        for cid in chosen:
            cell = next(c for c in cells if c["id"] == cid)
            label = cell_label(cell, axes)
            runs[label] = store.metrics(cid)
            statuses[label] = cell["status"]
        fig = plot_cell_trajectories(runs, statuses=statuses, title="trajectories: best, worst and first diverged cells")
        parts.append("<h2>Trajectories</h2><div class='figs'>"
                     f"<img alt='trajectories' src='{figure_to_data_uri(fig)}'></div>")

    # ---- results table
    from catapult.sweep.store import BEST_METRICS, FINAL_METRICS
    from catapult.sweep.store_export import cell_marks, spectrum_columns

    keys = [a["key"] for a in axes]
    metric_cols = [m for m in (*FINAL_METRICS, *BEST_METRICS) if any(c.get(m) is not None for c in cells)]
    # eval.spectrum_top_k / trace_matvecs, and whether the final sharpness' and lambda_0's solves converged
    spectra = {c["id"]: cell_marks(store, c) for c in cells}
    metric_cols += spectrum_columns(spectra.values())
    head = ["cell", *keys, "status", *metric_cols, "lambda_0", "lr_target", "steps", "time (s)", "error"]
    parts.append("<h2>Results</h2><p>Final values are at the last step (test metrics from the last evaluation); "
                 "best values are over the run. Accuracies in %.</p><table><tr>"
                 + "".join(f"<th>{_escape(h)}</th>" for h in head) + "</tr>")
    for c in cells:
        cls = c["status"] if c["status"] in ("diverged", "failed") else ("best" if c["id"] == best_id else "")
        row = [f"<td>{_fmt(c['id'])}</td>"]
        row += [f"<td class='text'>{_escape(_label(by_label, k, c['swept'].get(k)))}</td>" for k in keys]
        row.append(f"<td class='text'>{_escape(str(c['status']))}</td>")
        row += [f"<td>{_fmt(c.get(m, spectra[c['id']].get(m)), m)}</td>" for m in metric_cols]
        row += [f"<td>{_fmt(c.get('lambda_0'))}</td>", f"<td>{_fmt(c.get('lr_target'))}</td>",
                f"<td>{_fmt(c.get('steps_completed'))}</td>", f"<td>{_fmt(c.get('wall_time_s'))}</td>"]
        err = c.get("error")
        row.append("<td class='text'>" + (f"<details><summary>{_escape(err.splitlines()[0][:80])}</summary>"
                                          f"<pre>{_escape(err)}</pre></details>" if err else "") + "</td>")
        parts.append(f"<tr class='{cls}'>" + "".join(row) + "</tr>")
    parts.append("</table>")

    # ---- lambda_0 and spec
    lam = store.lambda0_table()
    if lam:
        parts.append("<h2>lambda_0 (sharpness at initialization)</h2><table><tr><th>key</th><th>seed</th>"
                     "<th>lambda_0</th><th>converged</th></tr>")
        for row in lam:
            inputs = store.json_field(row["inputs_json"] or None, f"lambda0 {row['key']!r} inputs_json") or {}
            mark = store.lambda0_converged(row["key"])   # checked: a damaged mark is a StoreError
            parts.append(f"<tr><td class='text'>{_escape(row['key'])}</td><td>{_fmt(inputs.get('seed'))}</td>"
                         f"<td>{_fmt(row['value'])}</td><td class='text'>"
                         f"{'' if mark is None else 'yes' if mark else 'no'}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Sweep spec</h2><pre>" + _escape(yaml.safe_dump(
        {**spec["base"], "sweep": spec["sweep"]}, sort_keys=False, default_flow_style=None)) + "</pre>")
    parts.append(f"<p><small>catapult {_escape(store.meta('catapult_version') or '')}, "
                 f"spec sha256 {_escape((store.meta('spec_hash') or '')[:16])}</small></p></body></html>")
    return "\n".join(parts)


def _created(store) -> str:
    """When the store was created, as ``YYYY-MM-DD HH:MM`` (``?`` where it does not say); a value
    that is no time is a :class:`~catapult.sweep.store.StoreError` naming it."""
    from catapult.sweep.store import StoreError

    created = store.meta("created_at")
    if not created:
        return "?"
    try:
        return _dt.datetime.fromtimestamp(float(created)).strftime("%Y-%m-%d %H:%M")
    except (ValueError, OverflowError, OSError):
        raise StoreError(f"{store.path} is damaged: its created_at {created[:40]!r} is not a time") from None


def _seeds_section(store, axes: Sequence[Mapping[str, Any]],
                   by_label: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """With a ``seed`` axis (``sweep.seeds``): one row per cell over its seeds, mean ± sample std
    of the paper's metrics (:func:`catapult.sweep.store_export.aggregate_table`); each swept value
    under its grid label (``by_label``, as the results table: ``2^-3``, not the stored ``0.125``)."""
    if not any(a["key"] == "seed" and len(a["values"]) > 1 for a in axes):
        return []
    from catapult.sweep.store_export import aggregate_table

    columns, rows = aggregate_table(store)
    keys = columns[:columns.index("n_seeds")]
    shown = ("best_test_accuracy", "test_accuracy", "best_test_loss", "train_loss")
    # a collapsed seed finished and its values are averaged: '2 (1/0)' read as one seed behind a mean ± std of two
    head = "".join(f"<th>{_escape(c)}</th>" for c in [*keys, "seeds (finished/diverged/collapsed)", *shown])
    out = ["<h2>Over seeds (mean ± std)</h2><table><tr>" + head + "</tr>"]
    at = {c: j for j, c in enumerate(columns)}
    for row in rows:
        cells = [f"<td class='text'>{_escape(_label(by_label or {}, k, row[at[k]]))}</td>" for k in keys]
        cells.append(f"<td>{row[at['n_seeds']]} ({row[at['n_finished']]}/{row[at['n_diverged']]}/"
                     f"{row[at['n_collapsed']]})</td>")
        for m in shown:
            mean, sd = row[at[f"{m}_mean"]], row[at[f"{m}_std"]]
            text = "-" if mean is None else _fmt(mean, m) + ("" if sd is None else f" ± {_fmt(sd, m)}")
            cells.append(f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return out


def _transfer_section(cells: Sequence[Mapping[str, Any]], axes: Sequence[Mapping[str, Any]]) -> list[str]:
    """For a transfer study (a swept lr or init std, and a swept density or width): the
    transfer curves per parameterization and the table of optima with their drift."""
    from catapult.plots.transfer import edge_note, optima_rows, plot_transfer, transfer_curves, unfinished_note

    multi = [a["key"] for a in axes if len(a["values"]) > 1]
    x = next((k for k in ("optimizer.lr", "model.init_std") if k in multi), None)
    series = next((k for k in ("model.density", "model.width") if k in multi), None)
    if x is None or series is None:
        return []
    try:
        curves = transfer_curves(cells, axes, x=x, series=series, metric="test_loss")
    except ValueError as err:
        return [f"<p>No transfer curves: {_escape(str(err))}</p>"]
    if not any(math.isfinite(v) for by in curves.curves.values() for pts in by.values() for _, v in pts):
        return []
    fig = plot_transfer(curves, title=f"final test_loss vs {x}, one curve per {series}")
    header, rows = optima_rows(curves)
    table = ["<table><tr>" + "".join(f"<th>{_escape(c)}</th>" for c in header) + "</tr>"]
    table += ["<tr>" + "".join(f"<td class='text'>{_escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    note, edge = unfinished_note(curves), edge_note(curves)
    return [f"<h2>Transfer of {_escape(x)} across {_escape(series)}</h2>",
            f"<p class='warning'><b>Unfinished:</b> {_escape(note)}.</p>" if note else "",
            f"<p class='warning'><b>At the grid's end:</b> {_escape(edge)}.</p>" if edge else "",
            f"<p>Best {_escape(x)} per {_escape(series)} (its test loss in brackets; F = every point "
            "failed), how far it moves, log2(max/min), and its largest move away from the first "
            f"{_escape(series)}'s optimum.</p>",
            "<div class='figs'>" f"<img alt='transfer curves' src='{figure_to_data_uri(fig)}'></div>",
            "".join(table) + "</table>"]


def _label(by_label: Mapping[str, Mapping[str, str]], key: str, value: Any) -> str:
    from catapult.sweep.spec import canonical_json

    return by_label.get(key, {}).get(canonical_json(value), str(value))


def write_report(store_path: str | Path, out: str | Path | None = None, **kwargs) -> Path:
    """Write the report of the store at ``store_path`` to ``out`` (default: next to the store,
    ``<store stem>.html``) and return the path. The page is HTML: an ``out`` named with another
    suffix than ``.html`` or ``.htm`` (none is HTML too) is a ValueError, before the store is read."""
    from catapult.sweep.store import Store

    store_path = Path(store_path)
    out = Path(out) if out is not None else store_path.with_suffix(".html")
    if out.suffix.lower() not in ("", ".html", ".htm"):  # page.txt held HTML
        raise ValueError(f"out: {out.name} names no format write_report writes: HTML (.html, .htm); "
                         f"give one of those suffixes (none: html)")
    with Store(store_path, create=False) as store:
        text = build_report(store, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_whole(out, text)
    return out

