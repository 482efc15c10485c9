"""The sweep store's schema: its tables and columns, the cell statuses, the metrics it keeps
(:mod:`catapult.sweep.store` reads and writes it).

Schema (``SCHEMA_VERSION`` 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)
        schema_version, spec_json (canonical JSON of the sweep's spec document), spec_hash
        (its sha256), axes_json (swept keys with their values and labels), created_at,
        catapult_version
    cells(id INTEGER PRIMARY KEY,            -- grid order, 0-based
          config_json TEXT,                  -- resolved cell config, lr in the config's units
          swept_json TEXT,                   -- {dotted key: value}
          status TEXT,                       -- pending | running | finished | diverged | failed
          error TEXT,                        -- failed: the exception, with a traceback tail
          attempts INTEGER,                  -- how often the cell was handed to an executor
          lambda_0 REAL, lr_target REAL,     -- sharpness at init; absolute target lr
          train_loss, train_accuracy, test_loss, test_accuracy, sharpness REAL,  -- final values
                                             -- (test values and sharpness only when finished)
          best_train_loss, best_test_loss, best_test_accuracy REAL,               -- best values
          steps_completed INTEGER, diverged_at INTEGER,
          summary_json TEXT,                 -- the engine's summary dict
          worker TEXT, started_at REAL, finished_at REAL, wall_time_s REAL)
    metrics(cell_id INTEGER, step INTEGER, lr, threshold, train_loss, train_accuracy,
            sharpness REAL, sharpness_matvecs INTEGER, test_loss, test_accuracy REAL,
            extra_json TEXT,                 -- any other per-step keys
            PRIMARY KEY (cell_id, step))
    lambda0(key TEXT PRIMARY KEY, value REAL, inputs_json TEXT, measured_at REAL,
            converged INTEGER)               -- 1 / 0: whether every solve the value averages
                                             -- converged; NULL: unknown (a store before the column,
                                             -- or a lambda0_fn that gives no mark)
    drivers(id, host, pid, started_at, heartbeat), claims(cell_id, driver, claimed_at)
                                             -- who runs what: catapult.sweep.claims

Columns added since catapult 0.1.0 (:data:`ADDED_COLUMNS`, nullable, so ``SCHEMA_VERSION`` stays 1:
a catapult that does not know them reads and writes such a store as before, leaving them NULL)
are added in place when a store is opened for writing (``ALTER TABLE ... ADD COLUMN``, with the
claims tables); a reader of a store without them reads NULL (unknown) for them.
"""
from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "ADDED_COLUMNS", "STATUSES", "DONE_STATUSES", "FINAL_METRICS", "BEST_METRICS", "TRANSFER_METRICS", "METRIC_COLUMNS", "DDL",
           "STORE_COLUMNS", "PLOT_METRICS", "SUMMARY_PLOT_METRICS", "check_plot_metric"]

SCHEMA_VERSION = 1
#: Every status a cell can have. ``pending``/``running`` cells are (re)done by a resume;
#: ``failed`` cells too (a failure is not a result); ``finished``/``diverged`` are results.
STATUSES = ("pending", "running", "finished", "diverged", "failed")
DONE_STATUSES = ("finished", "diverged", "collapsed")  # collapsed: stored as finished, see record()
#: Final values (last logged step; test values from the last evaluation).
FINAL_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "sharpness")
#: Best values over the run: min train/test loss, max test accuracy (the paper's cell value).
BEST_METRICS = ("best_train_loss", "best_test_loss", "best_test_accuracy")
#: The cell metrics a hyperparameter-transfer curve can show (lower is better for losses, higher
#: for accuracies; :mod:`catapult.plots.transfer`, ``catapult transfer --metric``).
TRANSFER_METRICS = ("test_loss", "train_loss", "best_test_loss", "best_train_loss", "test_accuracy",
                    "train_accuracy", "best_test_accuracy")
#: Cell values a phase diagram can show (columns of the store's ``cells`` table;
#: :mod:`catapult.plots.phase`, ``catapult plot --metric``).
PLOT_METRICS = ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "sharpness",
                "best_test_accuracy", "best_test_loss", "best_train_loss", "lambda_0", "lr_target",
                "wall_time_s")
#: Values of a cell's summary (not ``cells`` columns) a phase diagram can show too, as the export does:
#: ``peak_sharpness``, the largest finite sharpness of the run (``catapult plot --metric``).
SUMMARY_PLOT_METRICS = ("peak_sharpness",)
#: Per-step columns of the ``metrics`` table (the engine's ``METRIC_COLUMNS``).
METRIC_COLUMNS = ("step", "lr", "threshold", "train_loss", "train_accuracy", "sharpness",
                  "sharpness_matvecs", "test_loss", "test_accuracy")

DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    id INTEGER PRIMARY KEY,
    config_json TEXT NOT NULL,
    swept_json TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lambda_0 REAL, lr_target REAL,
    {", ".join(f"{m} REAL" for m in FINAL_METRICS)},
    {", ".join(f"{m} REAL" for m in BEST_METRICS)},
    steps_completed INTEGER, diverged_at INTEGER,
    summary_json TEXT,
    worker TEXT, started_at REAL, finished_at REAL, wall_time_s REAL
);
CREATE TABLE IF NOT EXISTS metrics (
    cell_id INTEGER NOT NULL REFERENCES cells(id),
    step INTEGER NOT NULL,
    lr REAL, threshold REAL, train_loss REAL, train_accuracy REAL,
    sharpness REAL, sharpness_matvecs INTEGER, test_loss REAL, test_accuracy REAL,
    extra_json TEXT,
    PRIMARY KEY (cell_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lambda0 (
    key TEXT PRIMARY KEY, value REAL NOT NULL, inputs_json TEXT, measured_at REAL, converged INTEGER
);
"""

#: ``{table: ((column, SQL type), ...)}``: the nullable columns added to a table of ``DDL`` since
#: catapult 0.1.0 (module docstring); a store opened for writing gains those it lacks.
ADDED_COLUMNS = {"lambda0": (("converged", "INTEGER"),)}

#: The columns of the tables every store has, the same since catapult 0.1.0 (``DDL``'s): a file
#: whose tables have the names but not these columns is another program's (or a damaged store),
#: never upgraded or read (:func:`catapult.sweep.store_file.missing_columns`).
STORE_COLUMNS = {
    "meta": ("key", "value"),
    "cells": ("id", "config_json", "swept_json", "status", "error", "attempts", "lambda_0", "lr_target",
              *FINAL_METRICS, *BEST_METRICS, "steps_completed", "diverged_at", "summary_json", "worker",
              "started_at", "finished_at", "wall_time_s"),
    "metrics": ("cell_id", *METRIC_COLUMNS, "extra_json"),
}


def check_plot_metric(metric: str) -> str:
    """``metric`` if a phase diagram can show it: one of :data:`PLOT_METRICS` or
    :data:`SUMMARY_PLOT_METRICS`, or a spectrum
    column (``eig_<i>``, ``hessian_trace``: the last value a cell logged, with
    ``eval.spectrum_top_k`` / ``eval.trace_matvecs``); else ``ValueError`` naming the choices.
    Here, not in :mod:`catapult.plots.phase`: ``catapult plot`` checks its ``--metric`` (the default
    too) while parsing its arguments, and a refused command imports no plotting (numpy, the config).

    >>> check_plot_metric("eig_2")
    'eig_2'
    >>> check_plot_metric("eig_0")
    Traceback (most recent call last):
    ...
    ValueError: unknown metric 'eig_0'; allowed: test_accuracy, test_loss, train_loss, train_accuracy, sharpness, best_test_accuracy, best_test_loss, best_train_loss, lambda_0, lr_target, wall_time_s, peak_sharpness, eig_<i> (i >= 1), hessian_trace
    """
    from catapult.engine.records import is_spectrum_column  # here: the store's modules import no records

    if metric in PLOT_METRICS or metric in SUMMARY_PLOT_METRICS or is_spectrum_column(metric):
        return metric
    raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(PLOT_METRICS + SUMMARY_PLOT_METRICS)}, "
                     f"eig_<i> (i >= 1), hessian_trace")
