"""Export a sweep store as a table: one row per cell (CSV, or Parquet with ``pyarrow``), or with
``aggregate=True`` one row per cell *over seeds* (``sweep.seeds``): ``<metric>_mean``,
``<metric>_std`` and ``n_seeds``.

A ``running`` cell that no live driver holds is exported with status ``interrupted``. Sweeps
that log the spectrum (``eval.spectrum_top_k``, ``eval.trace_matvecs``) gain the last logged
``eig_1 .. eig_k`` and ``hessian_trace`` of each cell as columns (and their means over seeds),
and ``eig_converged``, whether the top-k solve of those ``eig_i`` converged (1 / 0; over seeds its
mean is the fraction that did; empty for cells of stores written before the mark). Cells with a
final ``sharpness`` gain ``sharpness_converged``, whether the solve that gave it converged (1 / 0;
likewise); cells whose summary has one ``peak_sharpness`` with ``peak_sharpness_converged``; and
cells with a ``lambda_0`` ``lambda_0_converged``, whether every solve it averages converged (1 / 0,
last): for an lr ``c/lambda0`` the mark the store's lambda_0 cache keeps with the value that resolved
it, else the cell's summary's (empty for stores and summaries written before the marks, and for
cells that did not measure it, an absolute lr and no sharpness tracked).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from catapult.arguments import check_flag
from catapult.engine.records import EIG_CONVERGED_COLUMN, SHARPNESS_CONVERGED_COLUMN, has_final_values, is_spectrum_column, metric_columns
from catapult.files import MARK
from catapult.writing import csv_cell, csv_text, write_text_whole, write_whole
from catapult.sweep.store_schema import BEST_METRICS, FINAL_METRICS  # not .store: it re-exports this module

__all__ = ["EXPORT_COLUMNS", "AGGREGATE_METRICS", "export_table", "aggregate_table", "mean_std", "last_spectrum", "spectrum_columns",
           "cell_marks", "peak_sharpness", "cached_lambda0_mark", "LAMBDA0_CONVERGED_COLUMN", "PEAK_SHARPNESS_COLUMN",
           "PEAK_CONVERGED_COLUMN",
           "write_csv", "write_parquet"]


#: The export column marking a cell's lambda_0 (1 / 0: :func:`cell_marks`).
LAMBDA0_CONVERGED_COLUMN = "lambda_0_converged"
#: The export columns of a cell's peak sharpness and its solve's mark (:func:`peak_sharpness`).
PEAK_SHARPNESS_COLUMN, PEAK_CONVERGED_COLUMN = "peak_sharpness", "peak_sharpness_converged"

#: Columns after the swept keys in an export, in order.
EXPORT_COLUMNS = ("status", *FINAL_METRICS, *BEST_METRICS, "lambda_0", "lr_target", "steps_completed",
                  "diverged_at", "wall_time_s", "error")


def export_table(store) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)``: one row per cell: ``cell_id``, one column per swept key (its dotted
    name, the value as in the config, e.g. ``"2^3/lambda0"``), then :data:`EXPORT_COLUMNS`
    (final metrics ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
    ``sharpness``; best values; lambda_0; absolute ``lr_target``; ...), then, where cells logged
    the spectrum, :func:`spectrum_columns` (last logged values, and the mark of the top-k solve that
    gave the ``eig_i``). Missing values are ``None``.
    """
    keys = [a["key"] for a in store.axes()]
    cells = store.cells()
    for cell in cells:
        for key in cell["swept"]:
            if key not in keys:
                keys.append(key)
    spectra = {cell["id"]: cell_marks(store, cell) for cell in cells}
    extra = spectrum_columns(spectra.values())
    columns = ["cell_id", *keys, *EXPORT_COLUMNS, *extra]
    rows = []
    for cell in cells:
        row = [cell["id"], *(cell["swept"].get(k) for k in keys)]
        row += [cell.get(c) for c in EXPORT_COLUMNS]
        row += [spectra[cell["id"]].get(c) for c in extra]
        rows.append(row)
    return columns, rows


def last_spectrum(store, cell: dict) -> dict[str, float]:
    """The last logged value of each spectrum column (``eig_i``, ``hessian_trace``) of ``cell``,
    and ``eig_converged``, the mark of the row whose top-k solve gave the last ``eig_i`` (absent for
    rows of a store written before the mark); empty for a cell whose config logs none (its metrics
    are then not read), and for a cell that did not finish: like its sharpness, a diverged run's
    last value before it blew up would flatter it (its eig_1 stood beside a blank sharpness). A
    collapsed run finished (its final sharpness is kept): its values are given (they were left out)."""
    logged = [c for c in metric_columns(cell.get("config")) if is_spectrum_column(c)]
    if not logged or not has_final_values(cell.get("status")):   # as the store gives a final sharpness
        return {}
    last: dict[str, float] = {}
    for row in store.metrics(cell["id"]):
        for key in logged:
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                last[key] = value
                if key == "eig_1":  # a solve's eig_i are all finite or all NaN: this row gave them
                    mark = row.get(EIG_CONVERGED_COLUMN)
                    if isinstance(mark, int) and not isinstance(mark, bool):
                        last[EIG_CONVERGED_COLUMN] = mark
                    else:
                        last.pop(EIG_CONVERGED_COLUMN, None)
    return last


def sharpness_mark(store, cell: dict) -> dict[str, int]:
    """``{"sharpness_converged": 1 / 0}``: the mark of the sharpness solve that gave ``cell``'s final
    ``sharpness`` (the row it was read from); empty where the cell has no final sharpness (not
    finished, not measured, or NaN) and for rows of a store written before the mark. One indexed
    read of that row (:meth:`~catapult.sweep.store.Store.last_measured`), not the cell's metrics."""
    if cell.get("sharpness") is None:
        return {}
    row = store.last_measured(cell["id"], "sharpness")
    mark = None if row is None else row.get(SHARPNESS_CONVERGED_COLUMN)
    # the row the cell's final value came from (a NaN one is stored NULL: the cell's value too)
    if row is None or row["sharpness"] != cell["sharpness"] or not isinstance(mark, int) or isinstance(mark, bool):
        return {}
    return {SHARPNESS_CONVERGED_COLUMN: mark}


def peak_sharpness(cell: dict) -> dict[str, Any]:
    """``peak_sharpness`` and ``peak_sharpness_converged`` (1 / 0) of ``cell``, from its summary (the
    largest finite sharpness of the run, a diverged one's too, and the mark of the solve that gave
    it); each absent where the summary has none (no sharpness tracked, a summary written before the
    mark, a failed cell).

    >>> peak_sharpness({"summary": {"peak_sharpness": 41.5, "peak_sharpness_converged": True}})
    {'peak_sharpness': 41.5, 'peak_sharpness_converged': 1}
    """
    summary = cell.get("summary") or {}
    peak, mark = summary.get(PEAK_SHARPNESS_COLUMN), summary.get(PEAK_CONVERGED_COLUMN)
    out: dict[str, Any] = {}
    if isinstance(peak, (int, float)) and not isinstance(peak, bool) and math.isfinite(peak):
        out[PEAK_SHARPNESS_COLUMN] = peak
        if isinstance(mark, bool):
            out[PEAK_CONVERGED_COLUMN] = int(mark)
    return out


def cached_lambda0_mark(store, cell: dict) -> bool | None:
    """Whether the solves of the cached lambda_0 that resolved ``cell``'s ``c/lambda0`` lr
    converged (:meth:`~catapult.sweep.store.Store.lambda0_converged` of its
    :func:`~catapult.sweep.lambda0.lambda0_key`); ``None`` for an absolute lr and where the store
    does not say (a store written before the mark, a ``lambda0_fn`` that gave none).

    >>> cached_lambda0_mark(None, {"config": {"optimizer": {"lr": "2^-3/lambda0"}}}) is None   # no store
    True
    """
    from catapult.sweep.lambda0 import lambda0_key, needs_lambda0

    config = cell.get("config")
    try:
        if store is None or not needs_lambda0(config):
            return None
        key = lambda0_key(config)
    except (KeyError, TypeError, ValueError):   # a config without the keys the driver read: no mark
        return None
    return store.lambda0_converged(key)


def cell_marks(store, cell: dict) -> dict[str, Any]:
    """The columns after :data:`EXPORT_COLUMNS` of ``cell``: its :func:`last_spectrum`, its
    :func:`sharpness_mark`, its :func:`peak_sharpness` and ``lambda_0_converged``
    (:data:`LAMBDA0_CONVERGED_COLUMN`: 1 / 0 for the cell's ``lambda_0``: where its lr is
    ``c/lambda0``, the mark the store's cache keeps for the value that resolved it
    (:func:`cached_lambda0_mark`; the cell's run may measure none); else, or where the cache does not
    say, its summary's mark for a lambda_0 its run measured; absent otherwise).

    >>> cell_marks(None, {"id": 1, "summary": {"lambda_0": 2.5, "lambda_0_converged": False}})
    {'lambda_0_converged': 0}
    """
    out = {**last_spectrum(store, cell), **sharpness_mark(store, cell), **peak_sharpness(cell)}
    summary = cell.get("summary") or {}
    mark = cached_lambda0_mark(store, cell) if cell.get("lambda_0") is not None else None
    if mark is None and summary.get("lambda_0") is not None:
        mark = summary.get("lambda_0_converged")
    if isinstance(mark, bool):
        out[LAMBDA0_CONVERGED_COLUMN] = int(mark)
    return out


def spectrum_columns(spectra) -> list[str]:
    """``eig_1 .. eig_K`` (``K`` the largest index any cell logged) then ``hessian_trace`` and
    ``eig_converged`` where any cell has them, then ``sharpness_converged``
    (:func:`sharpness_mark`), ``peak_sharpness`` and ``peak_sharpness_converged``
    (:func:`peak_sharpness`) and last ``lambda_0_converged`` (:func:`cell_marks`) where any cell has them.

    >>> spectrum_columns([{}, {"eig_2": 1.0, "eig_1": 2.0, "eig_converged": 1}, {"hessian_trace": 9.0}])
    ['eig_1', 'eig_2', 'hessian_trace', 'eig_converged']
    >>> spectrum_columns([{"sharpness_converged": 0}, {"eig_1": 2.0}])
    ['eig_1', 'sharpness_converged']
    """
    found = {key for spectrum in spectra for key in spectrum}
    top = max((int(k[4:]) for k in found if is_spectrum_column(k) and k.startswith("eig_")), default=0)
    return ([f"eig_{i}" for i in range(1, top + 1)] + (["hessian_trace"] if "hessian_trace" in found else [])
            + ([EIG_CONVERGED_COLUMN] if EIG_CONVERGED_COLUMN in found else [])
            + ([SHARPNESS_CONVERGED_COLUMN] if SHARPNESS_CONVERGED_COLUMN in found else [])
            + [c for c in (PEAK_SHARPNESS_COLUMN, PEAK_CONVERGED_COLUMN) if c in found]
            + ([LAMBDA0_CONVERGED_COLUMN] if LAMBDA0_CONVERGED_COLUMN in found else []))


#: Columns :func:`aggregate_table` averages over seeds.
AGGREGATE_METRICS = (*FINAL_METRICS, *BEST_METRICS, "lambda_0", "lr_target", "steps_completed")
#: ... over every seed with a result, a diverged one included; the others over finished seeds only
_OF_EVERY_RESULT = ("lambda_0", "lr_target", "steps_completed", LAMBDA0_CONVERGED_COLUMN)


def mean_std(values: Sequence[Any]) -> tuple[float | None, float | None, int]:
    """``(mean, std, n)`` of the finite numbers in ``values`` (``None``/NaN/inf/non-numbers
    skipped); ``std`` is the sample standard deviation ``sqrt(sum (x - mean)^2 / (n - 1))``,
    ``None`` for one value (undefined, as ``statistics.stdev`` says: not 0, which would claim the
    seeds agree); ``(None, None, 0)`` for none. Both are computed exactly and rounded once
    (:mod:`statistics`), so equal values have their own value as mean and a std of 0.

    >>> mean_std([1.0, 2.0, 3.0, None, float("nan")]), mean_std([4.0])
    ((2.0, 1.0, 3), (4.0, None, 1))
    """
    xs = [float(v) for v in values
          if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    # statistics' exact rational sums, each result rounded once: fsum / n rounds twice, and three
    # seeds at lr 0.1 averaged to 0.10000000000000002 with a std of 1.7e-17
    mean = float(statistics.mean(xs))
    std = float(statistics.stdev(xs)) if len(xs) > 1 else None
    return mean, std, len(xs)


def aggregate_table(store) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)``: one row per cell of the grid *without* its ``seed`` axis, in grid order:
    the swept keys but ``seed``, ``n_seeds`` (cells with a result: finished, collapsed or
    diverged), ``n_finished``, ``n_diverged``, ``n_collapsed``, ``status`` (the seeds' common
    status, or ``mixed``), then for each of :data:`AGGREGATE_METRICS` ``<metric>_mean``,
    ``<metric>_std`` (sample std over seeds, :func:`mean_std`) and ``<metric>_n`` (seeds that
    have a finite value: the metrics of finished and collapsed seeds only, as in the phase diagram,
    but ``lambda_0``, ``lr_target`` and ``steps_completed`` of diverged seeds too); the spectrum columns of
    :func:`export_table` likewise (``eig_converged_mean``: the fraction of seeds whose last top-k
    solve converged; ``sharpness_converged_mean`` that of their final sharpness;
    ``peak_sharpness_mean`` and ``peak_sharpness_converged_mean`` over finished seeds, as the final
    sharpness; ``lambda_0_converged_mean`` that of their lambda_0, over every seed with a result as
    ``lambda_0``). A store without a seed axis gives
    one row per cell with ``n_seeds = 1`` and no std (an empty cell: one value has none).
    """
    columns, rows = export_table(store)
    keys = [c for c in columns[1:columns.index("status")] if c != "seed"]
    index = {c: j for j, c in enumerate(columns)}
    groups: dict[str, list[list[Any]]] = {}
    order: list[str] = []
    import json

    for row in rows:
        key = json.dumps([row[index[k]] for k in keys], default=str)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(row)
    metrics = [*AGGREGATE_METRICS, *(c for c in columns if is_spectrum_column(c)
                                     or c in (EIG_CONVERGED_COLUMN, SHARPNESS_CONVERGED_COLUMN, PEAK_SHARPNESS_COLUMN,
                                              PEAK_CONVERGED_COLUMN, LAMBDA0_CONVERGED_COLUMN))]
    out_columns = [*keys, "n_seeds", "n_finished", "n_diverged", "n_collapsed", "status"]
    for m in metrics:
        out_columns += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    out_rows = []
    for key in order:
        members = groups[key]
        statuses = [r[index["status"]] for r in members]
        done = [r for r, st in zip(members, statuses) if st in ("finished", "diverged", "collapsed")]
        common = set(statuses)
        row = [members[0][index[k]] for k in keys]
        row += [len(done), statuses.count("finished"), statuses.count("diverged"), statuses.count("collapsed"),
                common.pop() if len(common) == 1 else "mixed"]
        finished = [r for r in done if has_final_values(r[index["status"]])]
        for m in metrics:
            # a diverged seed's train accuracy and best values are from before it blew up: they
            # would flatter the cell (plot, transfer and the paper count it a failure)
            row += list(mean_std([r[index[m]] for r in (done if m in _OF_EVERY_RESULT else finished)]))
        out_rows.append(row)
    return out_columns, out_rows


def write_csv(store, path: str | Path, *, aggregate: bool = False) -> Path:
    """Write :func:`export_table` (or, with ``aggregate``, :func:`aggregate_table`) as CSV
    (empty cell for ``None``; floats round-trip exactly), whole or not at all (:func:`write_whole`)."""
    columns, rows = (aggregate_table(store) if check_flag("write_csv", "aggregate", aggregate)
                     else export_table(store))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_whole(path, csv_text(columns, rows))  # a stopped export leaves no truncated CSV
    return path


def write_parquet(store, path: str | Path, *, aggregate: bool = False) -> Path:
    """Write :func:`export_table` (or :func:`aggregate_table`) as Parquet (needs the optional
    ``pyarrow``). Swept columns whose values mix numbers and strings are written as strings (a list
    or mapping among them as its JSON text, as :func:`write_csv` writes it); a column of lists (a
    swept ``optimizer.betas``) as Parquet's list type, or as JSON text where its items mix types; a
    column of integers beyond int64 (a seed of 2^63 or more) as unsigned 64-bit, or beyond that as
    each number's text."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("parquet export needs pyarrow, an optional dependency: "
                          "pip install 'catapult[parquet]' (or export --format csv)") from None
    columns, rows = (aggregate_table(store) if check_flag("write_parquet", "aggregate", aggregate)
                     else export_table(store))
    data = {}
    for j, name in enumerate(columns):
        values = [row[j] for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            values = [None if v is None else csv_cell(v) for v in values]   # a list as JSON, as in the CSV
        elif kinds == {int, float}:
            values = [None if v is None else float(v) for v in values]
        elif kinds == {int} and not all(-2 ** 63 <= v < 2 ** 63 for v in values if v is not None):
            # beyond int64 (a seed of 2^63: torch takes seeds below 2^64) was pyarrow's OverflowError:
            # unsigned 64-bit where every value fits, else each number's exact text, as in the CSV
            fits = all(0 <= v < 2 ** 64 for v in values if v is not None)
            values = pa.array(values, type=pa.uint64()) if fits else [None if v is None else str(v) for v in values]
        elif kinds & {list, tuple, dict}:
            try:   # a list column (betas) as Parquet's own list type, else (mixed items) its JSON text
                pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                values = [None if v is None else csv_cell(v) for v in values]
        data[name] = values
    table = pa.table(data)
    # the mark by which a later export knows the file as its own to replace (catapult.files)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"catapult": MARK.encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda fh: pq.write_table(table, fh))
    return path
