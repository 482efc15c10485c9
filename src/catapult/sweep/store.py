"""The sweep result store: one SQLite file (stdlib ``sqlite3``, WAL journal).

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
    lambda0(key TEXT PRIMARY KEY, value REAL, inputs_json TEXT, measured_at REAL)

Durability: every result is written in its own transaction (the cell row and all its metric
rows together), with ``synchronous=FULL``; a process killed at any moment (``kill -9``) leaves
every committed cell intact and at worst one cell ``running``, which a resume redoes.
Non-finite floats: ``inf`` is stored as is, ``nan`` becomes NULL (SQLite has no NaN).
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "Store",
    "StoreError",
    "SpecChanged",
    "SCHEMA_VERSION",
    "FINAL_METRICS",
    "BEST_METRICS",
    "STATUSES",
    "DONE_STATUSES",
    "METRIC_COLUMNS",
    "EXPORT_COLUMNS",
    "export_table",
    "write_csv",
    "write_parquet",
]

SCHEMA_VERSION = 1
#: Every status a cell can have. ``pending``/``running`` cells are (re)done by a resume;
#: ``failed`` cells too (a failure is not a result); ``finished``/``diverged`` are results.
STATUSES = ("pending", "running", "finished", "diverged", "failed")
DONE_STATUSES = ("finished", "diverged")
#: Final values (last logged step; test values from the last evaluation).
FINAL_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "sharpness")
#: Best values over the run: min train/test loss, max test accuracy (the paper's cell value).
BEST_METRICS = ("best_train_loss", "best_test_loss", "best_test_accuracy")
#: Per-step columns of the ``metrics`` table (the engine's ``METRIC_COLUMNS``).
METRIC_COLUMNS = ("step", "lr", "threshold", "train_loss", "train_accuracy", "sharpness",
                  "sharpness_matvecs", "test_loss", "test_accuracy")

_DDL = f"""
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
    key TEXT PRIMARY KEY, value REAL NOT NULL, inputs_json TEXT, measured_at REAL
);
"""


class StoreError(RuntimeError):
    """A store that cannot be used: not a catapult store, a newer schema, no sweep in it."""


class SpecChanged(StoreError):
    """The store holds a different sweep than the one requested. ``changes`` lists what differs
    (one ``"key: old -> new"`` line each)."""

    def __init__(self, path: str | Path, changes: Sequence[str]):
        self.changes = list(changes)
        lines = "\n".join(f"  {line}" for line in self.changes) or "  (the spec documents differ)"
        super().__init__(
            f"{path} holds a different sweep; refusing to mix results. What changed:\n{lines}\n"
            "Use a new --store path for the new sweep, or rerun the original config to resume it."
        )


def _real(value: Any) -> float | None:
    """A float for SQLite: NaN -> None (SQLite has none), inf kept, non-numbers -> None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _json(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=True)


class Store:
    """A sweep's results in one SQLite file.

    Only one process writes (the sweep driver); any number may read while it runs (WAL).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise FileNotFoundError(f"store not found: {self.path}")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            if create:
                with self.transaction() as conn:
                    for statement in _DDL.split(";"):
                        if statement.strip():
                            conn.execute(statement)
            else:
                self._check_is_store()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a catapult sweep store (SQLite says: {err})") from None
        version = self.meta("schema_version")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer catapult (store schema {version}; "
                             f"this one reads {SCHEMA_VERSION})")

    def _check_is_store(self) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "cells", "metrics"} <= tables:
            raise StoreError(f"{self.path} is not a catapult sweep store (no meta/cells/metrics tables)")

    # ---- plumbing

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    # ---- the sweep

    def open_sweep(self, document: Mapping[str, Any], cells: Sequence[Any], *, axes: Sequence[Mapping] = ()) -> str:
        """Start a sweep in an empty store, or resume the same one.

        ``document`` is the spec document (:func:`catapult.sweep.spec.spec_document`), ``cells``
        the expanded cells (``.id``, ``.config``, ``.swept``), ``axes`` per-axis metadata for
        figures. Returns ``"new"`` or ``"resumed"``. Resuming resets ``running`` cells (an
        interrupted run) to ``pending``. A different spec raises :class:`SpecChanged` naming
        each changed key; nothing is modified then.
        """
        from catapult import __version__
        from catapult.sweep.spec import canonical_json, diff_documents, spec_hash

        digest = spec_hash(document)
        with self.transaction() as conn:
            stored = self.meta("spec_hash")
            if stored is None:
                n = conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
                if n:
                    raise StoreError(f"{self.path} has cells but no sweep spec; it is damaged")
                now = time.time()
                conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("spec_json", canonical_json(document)),
                    ("spec_hash", digest),
                    ("axes_json", _json(list(axes))),
                    ("created_at", repr(now)),
                    ("catapult_version", __version__),
                ])
                conn.executemany(
                    "INSERT INTO cells(id, config_json, swept_json, status) VALUES (?, ?, ?, 'pending')",
                    [(c.id, _json(c.config), _json(c.swept)) for c in cells],
                )
                return "new"
            if stored != digest:
                old = json.loads(self.meta("spec_json"))
                raise SpecChanged(self.path, diff_documents(old, json.loads(canonical_json(document))))
            conn.execute("UPDATE cells SET status = 'pending' WHERE status = 'running'")
            return "resumed"

    def spec(self) -> dict:
        """The stored spec document (``{"base": ..., "sweep": ...}``)."""
        text = self.meta("spec_json")
        if text is None:
            raise StoreError(f"{self.path} holds no sweep yet")
        return json.loads(text)

    def axes(self) -> list[dict]:
        """Per-axis metadata: ``[{key, values, labels, form, title}, ...]`` in axis order."""
        text = self.meta("axes_json")
        return json.loads(text) if text else []

    def cell_ids(self, statuses: Iterable[str] | None = None) -> list[int]:
        """Ids of the cells with one of ``statuses`` (all cells if ``None``), in grid order."""
        if statuses is None:
            return [r[0] for r in self.conn.execute("SELECT id FROM cells ORDER BY id")]
        statuses = list(statuses)
        marks = ",".join("?" * len(statuses))
        return [r[0] for r in self.conn.execute(f"SELECT id FROM cells WHERE status IN ({marks}) ORDER BY id", statuses)]

    def todo(self) -> list[int]:
        """Cells a (resumed) sweep still has to run: pending, running (interrupted) or failed."""
        return self.cell_ids(("pending", "running", "failed"))

    def counts(self) -> dict[str, int]:
        """``{status: number of cells}`` for every status."""
        out = dict.fromkeys(STATUSES, 0)
        for status, n in self.conn.execute("SELECT status, COUNT(*) FROM cells GROUP BY status"):
            out[status] = n
        return out

    def cells(self, ids: Iterable[int] | None = None) -> list[dict]:
        """Cell rows as dicts (``config`` and ``swept`` and ``summary`` parsed), in grid order."""
        rows = self.conn.execute("SELECT * FROM cells ORDER BY id").fetchall()
        wanted = None if ids is None else set(ids)
        out = []
        for row in rows:
            if wanted is not None and row["id"] not in wanted:
                continue
            d = dict(row)
            d["config"] = json.loads(d.pop("config_json"))
            d["swept"] = json.loads(d.pop("swept_json"))
            summary = d.pop("summary_json")
            d["summary"] = json.loads(summary) if summary else None
            out.append(d)
        return out

    def cell(self, cell_id: int) -> dict:
        rows = self.cells([cell_id])
        if not rows:
            raise KeyError(f"no cell {cell_id} in {self.path}")
        return rows[0]

    def metrics(self, cell_id: int) -> list[dict]:
        """The per-step metrics of one cell (``None`` where not measured), in step order."""
        out = []
        for row in self.conn.execute("SELECT * FROM metrics WHERE cell_id = ? ORDER BY step", (cell_id,)):
            d = dict(row)
            d.pop("cell_id")
            extra = d.pop("extra_json")
            if extra:
                d.update(json.loads(extra))
            out.append(d)
        return out

    # ---- writing results

    def mark_running(self, ids: Iterable[int], worker: str | None = None) -> None:
        """Cells handed to an executor: ``running``, ``attempts += 1`` (one transaction)."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE cells SET status = 'running', attempts = attempts + 1, started_at = ?, worker = ? "
                "WHERE id = ?", [(now, worker, i) for i in ids])

    def record(self, cell_id: int, result: Any, *, lambda_0: float | None = None) -> str:
        """Write one cell's result in one transaction and return its status.

        ``result`` has ``status`` (``finished``/``diverged``/``failed``), ``metrics`` (per-step
        dicts) and ``summary`` (dict); optionally ``error`` (str) and ``worker``. Earlier metric
        rows of the cell (from an interrupted attempt) are replaced.
        """
        status = getattr(result, "status", None)
        if status not in ("finished", "diverged", "failed"):
            raise ValueError(f"cell {cell_id}: result status must be finished, diverged or failed, got {status!r}")
        metrics = list(getattr(result, "metrics", None) or [])
        summary = dict(getattr(result, "summary", None) or {})
        error = getattr(result, "error", None)
        worker = getattr(result, "worker", None)
        final = _final_metrics(metrics, status)
        best = _best_metrics(metrics)
        if lambda_0 is None:
            lambda_0 = summary.get("lambda_0")
        steps_completed = summary.get("steps_completed")
        if steps_completed is None and metrics:
            steps_completed = metrics[-1].get("step")
        values = {
            "status": status,
            "error": error,
            "lambda_0": _real(lambda_0),
            "lr_target": _real(summary.get("lr_target")),
            **{m: _real(final.get(m)) for m in FINAL_METRICS},
            **{m: _real(best.get(m)) for m in BEST_METRICS},
            "steps_completed": steps_completed,
            "diverged_at": summary.get("diverged_at"),
            "summary_json": _json(summary) if summary else None,
            "finished_at": time.time(),
            "wall_time_s": _real(summary.get("wall_time_s")),
        }
        if worker is not None:
            values["worker"] = worker
        rows = [_metric_row(cell_id, m) for m in metrics]
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM cells WHERE id = ?", (cell_id,)).fetchone() is None:
                raise KeyError(f"no cell {cell_id} in {self.path}")
            conn.execute("DELETE FROM metrics WHERE cell_id = ?", (cell_id,))
            conn.executemany(
                f"INSERT INTO metrics(cell_id, {', '.join(METRIC_COLUMNS)}, extra_json) "
                f"VALUES ({', '.join('?' * (len(METRIC_COLUMNS) + 2))})", rows)
            conn.execute(f"UPDATE cells SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                         [*values.values(), cell_id])
        return status

    # ---- lambda_0 cache

    def get_lambda0(self, key: str) -> float | None:
        """The cached lambda_0 for a :func:`~catapult.sweep.lambda0.lambda0_key`, or ``None``."""
        row = self.conn.execute("SELECT value FROM lambda0 WHERE key = ?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def put_lambda0(self, key: str, value: float, inputs: Mapping[str, Any] | None = None) -> None:
        """Cache one lambda_0 (its own transaction)."""
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO lambda0(key, value, inputs_json, measured_at) VALUES (?, ?, ?, ?)",
                         (key, float(value), _json(inputs) if inputs is not None else None, time.time()))

    def lambda0_table(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT key, value, inputs_json, measured_at FROM lambda0")]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _final_metrics(metrics: Sequence[Mapping[str, Any]], status: str) -> dict:
    """Final values: train loss/accuracy of the last logged row; for a finished run also test
    loss/accuracy and sharpness from the last row that has them (a diverged run has no final
    test values: its last evaluation was before it blew up and would flatter it)."""
    out: dict[str, Any] = {}
    if not metrics:
        return out
    last = metrics[-1]
    out["train_loss"] = last.get("train_loss")
    out["train_accuracy"] = last.get("train_accuracy")
    if status != "finished":
        return out
    for key in ("test_loss", "test_accuracy", "sharpness"):
        for row in reversed(metrics):
            if row.get(key) is not None:
                out[key] = row[key]
                break
    return out


def _best_metrics(metrics: Sequence[Mapping[str, Any]]) -> dict:
    def pick(key, fn):
        values = [row[key] for row in metrics if _finite(row.get(key))]
        return fn(values) if values else None

    return {
        "best_train_loss": pick("train_loss", min),
        "best_test_loss": pick("test_loss", min),
        "best_test_accuracy": pick("test_accuracy", max),
    }


def _metric_row(cell_id: int, row: Mapping[str, Any]) -> tuple:
    extra = {k: v for k, v in row.items() if k not in METRIC_COLUMNS}
    values = []
    for col in METRIC_COLUMNS:
        v = row.get(col)
        values.append(int(v) if col in ("step", "sharpness_matvecs") and v is not None else _real(v))
    return (cell_id, *values, _json(extra) if extra else None)


# --------------------------------------------------------------------------------------------
# Export: one row per cell


#: Columns after the swept keys in an export, in order.
EXPORT_COLUMNS = ("status", *FINAL_METRICS, *BEST_METRICS, "lambda_0", "lr_target", "steps_completed",
                  "diverged_at", "wall_time_s", "error")


def export_table(store: Store) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)``: one row per cell: ``cell_id``, one column per swept key (its dotted
    name, the value as in the config, e.g. ``"2^3/lambda0"``), then :data:`EXPORT_COLUMNS`
    (final metrics ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
    ``sharpness``; best values; lambda_0; absolute ``lr_target``; ...). Missing values are ``None``.
    """
    keys = [a["key"] for a in store.axes()]
    cells = store.cells()
    for cell in cells:
        for key in cell["swept"]:
            if key not in keys:
                keys.append(key)
    columns = ["cell_id", *keys, *EXPORT_COLUMNS]
    rows = []
    for cell in cells:
        row = [cell["id"], *(cell["swept"].get(k) for k in keys)]
        row += [cell.get(c) for c in EXPORT_COLUMNS]
        rows.append(row)
    return columns, rows


def write_csv(store: Store, path: str | Path) -> Path:
    """Write :func:`export_table` as CSV (empty cell for ``None``; floats round-trip exactly)."""
    import csv

    columns, rows = export_table(store)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return path


def write_parquet(store: Store, path: str | Path) -> Path:
    """Write :func:`export_table` as Parquet (needs the optional ``pyarrow``). Swept columns
    whose values mix numbers and strings are written as strings."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("parquet export needs pyarrow, an optional dependency: "
                          "pip install 'catapult[parquet]' (or export --format csv)") from None
    columns, rows = export_table(store)
    data = {}
    for j, name in enumerate(columns):
        values = [row[j] for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            values = [None if v is None else str(v) for v in values]
        elif kinds == {int, float}:
            values = [None if v is None else float(v) for v in values]
        data[name] = values
    table = pa.table(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))
    return path
