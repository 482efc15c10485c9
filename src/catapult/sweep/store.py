"""The sweep result store: one SQLite file (stdlib ``sqlite3``, WAL journal).

Identity: ``PRAGMA application_id`` = :data:`catapult.sweep.store_file.APPLICATION_ID`
(``"CtPt"``); any other file is refused untouched (:mod:`catapult.sweep.store_file`). A store
written by catapult 0.1.0 (application_id 0) is recognised by its tables; opening it for
writing upgrades it in place: the application_id is set and the ``drivers``/``claims``
tables are added (nothing else changes; catapult 0.1.0 can still read it). Readers
(export, plot, transfer, report) open it read-only and leave it as it is.

Schema: :mod:`catapult.sweep.store_schema`. Parts: drivers and claims
(:mod:`catapult.sweep.store_claims`), the lambda_0 cache (:mod:`catapult.sweep.store_lambda0`),
the errors (:mod:`catapult.sweep.store_errors`), the export (:mod:`catapult.sweep.store_export`).

Durability: every result is written in its own transaction (the cell row and all its metric
rows together), with ``synchronous=FULL``; a process killed at any moment (``kill -9``) leaves
every committed cell intact and at worst its claimed cells ``running`` with a dead holder,
which read as ``interrupted`` and which a resume (or a concurrent driver) redoes.
Non-finite floats: ``inf`` is stored as is, ``nan`` becomes NULL (SQLite has no NaN).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from catapult.arguments import check_flag
from catapult.sweep.claims import CLAIMS_DDL
from catapult.sweep.store_claims import DriverClaims
from catapult.sweep.store_errors import SpecChanged, StoreError
from catapult.sweep.store_lambda0 import Lambda0Cache
from catapult.sweep.store_schema import BEST_METRICS, DDL, DONE_STATUSES, FINAL_METRICS, METRIC_COLUMNS, SCHEMA_VERSION, STATUSES
from catapult.sweep.store_file import (APPLICATION_ID, connect_readonly, create_store_file, drop_live_readers,
                                       identify, missing_added_columns, missing_columns, sqlite_damage)
from catapult.sweep.store_raw import opening
from catapult.sweep.store_grid import axis_key_problem, grid_value_problem
from catapult.sweep.store_rows import (MAX_JSON_DEPTH, best_metrics, final_metrics, json_depth, json_text, metric_row,
                                      read_json, sql_real)

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
    "file_problem",
]


def _on_read_only_file_system(folder: Path) -> bool:
    """Whether the existing directory ``folder`` lies on a file system mounted read-only
    (``statvfs``'s ``ST_RDONLY``; False where the platform cannot say)."""
    if not folder.is_dir() or not hasattr(os, "statvfs"):
        return False
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _identify(path: Path, create: bool) -> str | StoreError:
    """:func:`~catapult.sweep.store_file.identify`'s kind of the existing file ``path``, or the
    StoreError that refuses it (unreadable, a damaged SQLite file, a file of another program)."""
    try:
        kind = identify(path)  # reads the header only: a foreign file stays untouched
    except OSError as err:
        return StoreError(f"cannot read {path}: {err.strerror or err}")
    if kind == "foreign" and (damage := sqlite_damage(path)):
        return StoreError(f"{path} is a damaged SQLite file (SQLite says: {damage}), perhaps a store "
                          "cut short by a copy or a full disk; catapult cannot read it, and left it unchanged. "
                          + ("Give --store a new path, or restore the store from a copy."
                             if create else "Restore it from a copy."))
    if kind == "foreign":
        return StoreError(f"{path} is not a catapult sweep store (no catapult application_id "
                          f"{APPLICATION_ID:#x} in its SQLite header, and not a store of catapult 0.1.0); "
                          "it was left unchanged. " + ("Give --store a new path or an existing store."
                                                       if create else "Give the path of a sweep store."))
    return kind


def _disk_problem(path: Path, err: sqlite3.Error) -> str | None:
    """The words for an SQLite error of the disk, not of the store, or None for another error: on a
    full disk SQLite cannot grow the -shm file beside a store it opens ("disk I/O error", even for a
    read) or the -wal ("database or disk is full"), and the store, whole, was called "not a usable
    catapult sweep store"."""
    if not any(words in str(err) for words in ("disk I/O error", "disk is full")):
        return None
    try:
        room = f"; the disk holding it has {shutil.disk_usage(path.absolute().parent).free / 1024:,.0f} KiB free"
    except OSError:
        room = ""
    return (f"{path} could not be opened for writing (SQLite says: {err}{room}); the store is as it was: free "
            f"some space beside it (SQLite keeps its -wal and -shm files there) and run again")


def _name_problem(path: Path) -> StoreError | None:
    """A path SQLite cannot take: one whose full name (links followed) is not UTF-8, which SQLite's
    file names are (a byte ``0xff`` in a Linux name; Python holds it as a lone surrogate). Every store
    command ended there in a UnicodeEncodeError traceback, exit 1, also for a store named in UTF-8
    inside such a folder."""
    full = os.fsencode(path.resolve())
    try:
        full.decode("utf-8")
    except UnicodeDecodeError:
        shown = full.decode("utf-8", "backslashreplace")
        return StoreError(f"{shown} is no name SQLite can open a store by: it is not UTF-8; give the store "
                          f"(and its folders) UTF-8 names")
    return None


def file_problem(path: str | Path, *, create: bool = False) -> str | None:
    """Why :class:`Store` would refuse the existing file ``path`` (the words of its
    :class:`StoreError`), or None for a store (this schema's or catapult 0.1.0's). Reads only the
    header, read-only through SQLite (no ``open()``: see
    :func:`~catapult.sweep.store_file.has_sqlite_header`); the file is left unchanged. The CLI's
    store readers refuse a foreign file with it before they import their tables and figures.

    >>> import tempfile
    >>> notes = Path(tempfile.mkdtemp()) / "notes.db"
    >>> _ = notes.write_text("not a database")
    >>> file_problem(notes).endswith("it was left unchanged. Give the path of a sweep store.")
    True
    >>> notes.read_text()
    'not a database'
    """
    kind = _name_problem(Path(path)) or _identify(Path(path), create)
    return str(kind) if isinstance(kind, StoreError) else None


class Store(DriverClaims, Lambda0Cache):
    """A sweep's results in one SQLite file.

    ``Store(path)`` opens for writing, creating the file if it does not exist; any number of
    drivers may write one store at once, each running only the cells it claimed
    (:mod:`catapult.sweep.claims`). ``Store(path, create=False)`` opens read-only (the journal mode
    untouched, no file beside the store created or changed:
    :func:`~catapult.sweep.store_file.connect_readonly`), also a file the reader may not write. Either way a file that
    is not a catapult store (no :data:`~catapult.sweep.store_file.APPLICATION_ID`) is refused
    with :class:`StoreError` and left byte-for-byte unchanged. A store written by catapult
    0.1.0 (application_id 0, recognised by its tables) is read as it is, and *upgraded* when
    opened for writing: its application_id is set and the claims tables are added.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool | None = None):
        self.path = Path(path)
        # create="no" was truthy: it made a new, empty store where the user asked only to open one
        create = check_flag("Store", "create", create)
        self.readonly = (not create) if readonly is None else check_flag("Store", "readonly", readonly)
        if problem := _name_problem(self.path):   # before any folder is made for it
            raise problem
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"store not found: {self.path}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                create_store_file(self.path, DDL + CLAIMS_DDL)  # False: another driver made it first
            except (OSError, sqlite3.Error):
                folder = self.path.absolute().parent
                while not folder.exists():
                    folder = folder.parent
                if _on_read_only_file_system(folder):
                    raise StoreError(f"cannot create the store {self.path}: {folder} is read-only") from None
                raise  # a file in the way, a folder we may not write: the CLI names those
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a catapult sweep store")
        kind = _identify(self.path, create)
        if isinstance(kind, StoreError):
            raise kind
        self.legacy = kind == "legacy"
        if not self.readonly and not (os.access(self.path, os.W_OK)
                                      and os.access(self.path.absolute().parent, os.W_OK | os.X_OK)):
            # SQLite's own word for it is "unable to open database file"
            raise StoreError(f"{self.path} is a catapult sweep store, but it cannot be written here: the file "
                             f"or its folder (where SQLite keeps its -wal and -shm files) is read-only; "
                             f"`export`, `plot`, `transfer` and `report` can still read it")
        try:
            if self.readonly:
                self.conn = connect_readonly(self.path)
            else:
                with opening():   # no reader of this process open()s the store's files as it takes its locks
                    drop_live_readers(self.path)   # (one holding the WAL index read-only: no write could pass)
                    self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
                    self._check_columns()  # before anything is written to it
                    self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                # a 0.1.0 store is upgraded in place: marked with the application_id and given
                # the claims tables (its cells and results are kept as they are)
                with self.transaction() as conn:
                    if self.legacy:
                        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    for statement in (DDL + CLAIMS_DDL).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    # columns added since 0.1.0 (store_schema.ADDED_COLUMNS), NULL in the rows there
                    for table, column, kind in missing_added_columns(conn):
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self.conn.row_factory = sqlite3.Row
            self._check_is_store()
            version = self.meta("schema_version")  # the first read of a page: a damaged file fails here
        except sqlite3.DatabaseError as err:
            raise StoreError(_disk_problem(self.path, err)
                             or f"{self.path} is not a usable catapult sweep store (SQLite says: {err})") from None
        if version is not None and not version.isdigit():
            raise StoreError(f"{self.path} is damaged: its schema_version {version[:40]!r} is not a number")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer catapult (store schema {version}; "
                             f"this one reads {SCHEMA_VERSION})")

    def _check_columns(self) -> None:
        missing = missing_columns(self.conn)
        if missing:
            self.conn.close()
            raise StoreError(f"{self.path} is damaged: its tables lack the columns "
                             f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")

    def _check_is_store(self) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "cells", "metrics"} <= tables:
            raise StoreError(f"{self.path} is not a catapult sweep store (no meta/cells/metrics tables)")
        self._check_columns()
        self._has_claims = {"drivers", "claims"} <= tables

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

    def json_field(self, text: str | None, what: str, kind: type = dict) -> Any:
        """``text`` (a JSON column of this store) parsed, or ``None`` for ``None``; a value that
        is not JSON, or not of ``kind``, is a :class:`StoreError` naming ``what`` (a damaged or
        hand-edited store is refused with a message, not a traceback from its consumer)."""
        if text is None:
            return None
        try:
            value = read_json(text)
        except (TypeError, ValueError, RecursionError) as err:
            raise StoreError(f"{self.path} is damaged: {what} is not valid JSON ({err})") from None
        if json_depth(value) > MAX_JSON_DEPTH:   # its readers recurse: a RecursionError traceback
            raise StoreError(f"{self.path} is damaged: {what} nests more than {MAX_JSON_DEPTH} levels deep")
        if not isinstance(value, kind):
            raise StoreError(f"{self.path} is damaged: {what} is a JSON {type(value).__name__}, "
                             f"not a {kind.__name__}")
        return value

    def meta(self, key: str) -> str | None:
        """The text of the meta row ``key`` (``None``: no such row); a value that is no text (a
        BLOB, or a number in a forged table without TEXT affinity) is a :class:`StoreError` naming
        it: its readers slice and escape it as a string (``report`` raised TypeError)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is not None and not isinstance(row[0], str):
            raise StoreError(f"{self.path} is damaged: its meta {key} is a {type(row[0]).__name__} "
                             f"({str(row[0])[:40]}), not text")
        return None if row is None else row[0]

    # ---- the sweep

    def open_sweep(self, document: Mapping[str, Any], cells: Sequence[Any], *, axes: Sequence[Mapping] = ()) -> str:
        """Start a sweep in an empty store, or resume the same one.

        ``document`` is the spec document (:func:`catapult.sweep.spec_document.spec_document`), ``cells``
        the expanded cells (``.id``, ``.config``, ``.swept``), ``axes`` per-axis metadata for
        figures. Returns ``"new"`` or ``"resumed"``. Interrupted (``running``, unclaimed) cells
        are left as they are: :meth:`claim` hands them out again. A different spec raises
        :class:`SpecChanged` naming each changed key; nothing is modified then.
        """
        from catapult import __version__
        from catapult.sweep.spec_document import spec_hash

        digest = spec_hash(document)
        with self.transaction() as conn:
            stored = self.check_spec(document)
            if stored is None:
                n = conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
                if n:
                    raise StoreError(f"{self.path} has cells but no sweep spec; it is damaged")
                now = time.time()
                conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("spec_json", json_text(document, canonical=True)),   # standard JSON (json_text)
                    ("spec_hash", digest),
                    ("axes_json", json_text(list(axes))),
                    ("created_at", repr(now)),
                    ("catapult_version", __version__),
                ])
                conn.executemany(
                    "INSERT INTO cells(id, config_json, swept_json, status) VALUES (?, ?, ?, 'pending')",
                    [(c.id, json_text(c.config), json_text(c.swept)) for c in cells],
                )
                return "new"
            self.check_cells(cells)
            return "resumed"

    def check_cells(self, cells: Sequence[Any]) -> None:
        """Raise :class:`SpecChanged` if the stored cells are numbered differently from
        ``cells``. The same spec can do that (sweep.grid's keys listed in another order), and the
        remaining cells would then train other cells' configs under their ids. Reads only."""
        # each stored row through json_field: a hand-made row nested ~1000 deep was a RecursionError
        # traceback out of json here, and one 900 deep printed all its brackets in the refusal
        stored_cells = {i: self.json_field(v, f"cell {i}'s swept_json")
                        for i, v in self.conn.execute("SELECT id, swept_json FROM cells")}
        moved = [c for c in cells if stored_cells.get(c.id) != read_json(json_text(c.swept))]
        if moved or len(stored_cells) != len(cells):
            first = moved[0] if moved else None
            keys = self._rounded_range_keys(stored_cells, cells, moved)
            if keys and first is not None:
                axes = f"range {'axis' if len(keys) == 1 else 'axes'} {', '.join(keys)}"
                listed = list(dict.fromkeys(stored_cells[i][keys[0]] for i in sorted(stored_cells)))
                raise SpecChanged(self.path, [
                    f"the values of the {axes} differ from this catapult's by float rounding alone: cell "
                    f"{first.id} was {({k: stored_cells[first.id][k] for k in keys})}, is now "
                    f"{({k: first.swept[k] for k in keys})}. The store was made by a catapult that counted "
                    "ranges in binary floating point (start + i*step); this one counts them in decimal as written"],
                    advice="This catapult cannot resume it: use a new --store path for the sweep (the range now "
                    "gives the decimal values), or, to run the old values, list them explicitly in sweep.grid "
                    f"(with a new --store path): {keys[0]}: {listed}")
            raise SpecChanged(self.path, [
                "the cells are numbered differently (were sweep.grid's keys listed in another order?)"
                + (f": cell {first.id} was {stored_cells.get(first.id)}, is now {first.swept}" if first else "")])

    def _rounded_range_keys(self, stored: Mapping[int, Any], cells: Sequence[Any], moved: Sequence[Any]) -> list[str]:
        """The ``range``/``log2`` axes whose stored values differ from ``cells``' by float rounding alone
        (within 1e-12 of the axis's largest magnitude; a store of a catapult that counted ranges
        start + i*step in binary), where every moved cell differs so and only there; else ``[]``."""
        try:
            ranged = {a["key"] for a in self.axes() if a.get("form") in ("range", "log2")}
        except StoreError:
            return []
        if not moved or len(stored) != len(cells):
            return []
        new = {c.id: read_json(json_text(c.swept)) for c in cells}
        scale: dict[str, float | None] = {}   # a differing key's largest magnitude (None: not a range's numbers)
        for c in moved:
            old = stored.get(c.id)
            if not isinstance(old, dict) or old.keys() != new[c.id].keys():
                return []
            for key in (k for k in new[c.id] if old[k] != new[c.id][k]):
                if key not in scale:
                    values = [new[i].get(key) for i in new] + [s.get(key) if isinstance(s, dict) else None
                                                               for s in stored.values()]
                    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and abs(v) < float("inf") for v in values)
                    scale[key] = max(abs(v) for v in values) if key in ranged and numbers else None
                if scale[key] is None or abs(old[key] - new[c.id][key]) > 1e-12 * scale[key]:
                    return []
        return list(scale)

    def check_spec(self, document: Mapping[str, Any]) -> str | None:
        """Raise :class:`SpecChanged` if this store holds a sweep other than ``document``'s;
        return the stored spec hash (``None``: no sweep yet). Reads only, so a store opened with
        ``create=False`` can be checked before it is opened for writing (which upgrades a store
        of catapult 0.1.0): a store of another sweep, given by mistake, is left as it was."""
        from catapult.sweep.spec import canonical_json
        from catapult.sweep.spec_document import diff_documents, seeds_as_list, spec_hash

        stored = self.meta("spec_hash")
        if stored is not None and stored != spec_hash(document):
            old = self.json_field(self.meta("spec_json"), "meta spec_json")
            new = read_json(canonical_json(document))
            if spec_hash(seeds_as_list(old)) != spec_hash(seeds_as_list(new)):
                raise SpecChanged(self.path, diff_documents(old, new))
        return stored

    def spec(self) -> dict:
        """The stored spec document (``{"base": ..., "sweep": ...}``)."""
        text = self.meta("spec_json")
        if text is None:
            raise StoreError(f"{self.path} holds no sweep yet")
        spec = self.json_field(text, "meta spec_json")
        for part in ("base", "sweep"):
            if not isinstance(spec.get(part), dict):
                raise StoreError(f"{self.path} is damaged: meta spec_json has no {part!r} mapping")
        return spec

    def axes(self) -> list[dict]:
        """Per-axis metadata: ``[{key, values, labels, form, title}, ...]`` in axis order."""
        if (text := self.meta("axes_json")) is None and self.meta("spec_json") is None:  # as spec(); plot: "no swept keys"
            raise StoreError(f"{self.path} holds no sweep yet")
        axes = self.json_field(text or "[]", "meta axes_json", list)
        if not all(isinstance(a, dict) and isinstance(a.get("key"), str) and isinstance(a.get("values"), list)
                   and isinstance(a.get("labels"), list) and len(a["labels"]) == len(a["values"]) for a in axes):
            raise StoreError(f"{self.path} is damaged: meta axes_json is not a list of axes "
                             "(each a key with its values and as many labels)")
        if problem := axis_key_problem([a["key"] for a in axes]):
            raise StoreError(f"{self.path} is damaged: {problem}")
        return axes

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

    def counts(self, *, interrupted: bool = False) -> dict[str, int]:
        """``{status: number of cells}`` for every stored status. With ``interrupted=True``
        also ``interrupted`` (``running`` cells no live driver holds), and ``running`` then
        counts only the cells a live driver holds."""
        interrupted = check_flag("Store.counts", "interrupted", interrupted)
        out = dict.fromkeys(STATUSES, 0)
        for status, n in self.conn.execute("SELECT status, COUNT(*) FROM cells GROUP BY status"):
            out[status] = n
        if interrupted:
            out["interrupted"] = len(self.interrupted_ids())
            out["running"] -= out["interrupted"]
        return out

    def cells(self, ids: Iterable[int] | None = None) -> list[dict]:
        """Cell rows as dicts (``config`` and ``swept`` and ``summary`` parsed), in grid order.
        ``status`` is as stored, except that a ``running`` cell no live driver holds is
        ``interrupted`` (see :meth:`interrupted_ids`)."""
        rows = self.conn.execute("SELECT * FROM cells ORDER BY id").fetchall()
        wanted = None if ids is None else set(ids)
        interrupted = self.interrupted_ids()
        out = []
        for row in rows:
            if wanted is not None and row["id"] not in wanted:
                continue
            d = dict(row)
            if d["id"] in interrupted:
                d["status"] = "interrupted"
            where = f"cell {d['id']}"
            d["config"] = self.json_field(d.pop("config_json"), f"{where} config_json")
            d["swept"] = self.json_field(d.pop("swept_json"), f"{where} swept_json")
            d["summary"] = self.json_field(d.pop("summary_json") or None, f"{where} summary_json")
            for column in _NUMBER_COLUMNS:   # hand-edited text there was a TypeError in a reader
                value = d.get(column)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise StoreError(f"{self.path} is damaged: {where} {column} {value!r:.40} is not a number")
            if d["status"] == "finished" and (d["summary"] or {}).get("status") == "collapsed":
                d["status"] = "collapsed"
            out.append(d)
        problem = grid_value_problem(out, self.axes()) if out else None
        if problem:  # a hand-edited value off the grid was drawn, exported and reported as a result
            raise StoreError(f"{self.path} is damaged: {problem}")
        return out

    def cell(self, cell_id: int) -> dict:
        rows = self.cells([cell_id])
        if not rows:
            raise KeyError(f"no cell {cell_id} in {self.path}")
        return rows[0]

    def metrics(self, cell_id: int) -> list[dict]:
        """The per-step metrics of one cell (``None`` where not measured), in step order; a damaged
        row is a :class:`StoreError` (:meth:`_metric_row`)."""
        return [self._metric_row(cell_id, row) for row in
                self.conn.execute("SELECT * FROM metrics WHERE cell_id = ? ORDER BY step", (cell_id,))]

    def last_measured(self, cell_id: int, column: str) -> dict | None:
        """The last per-step row of one cell whose ``column`` (one of the ``metrics`` table's
        :data:`METRIC_COLUMNS`) holds a value, as :meth:`metrics` gives rows; ``None`` if none does.
        One indexed lookup: the cell's other rows are not read."""
        if column not in METRIC_COLUMNS:
            raise ValueError(f"last_measured: column={column!r} is not one of {METRIC_COLUMNS}")
        row = self.conn.execute(f"SELECT * FROM metrics WHERE cell_id = ? AND {column} IS NOT NULL "
                                "ORDER BY step DESC LIMIT 1", (cell_id,)).fetchone()
        return None if row is None else self._metric_row(cell_id, row)

    def _metric_row(self, cell_id: int, row) -> dict:
        """One ``metrics`` row as a dict, its ``extra_json`` merged in. A hand-edited value that is no
        number (text, a BLOB; a step or a count that is no integer), or an ``extra_json`` key that
        shadows a column, is a :class:`StoreError` naming the cell and step: a step ``'zz'`` drew the
        trajectory on a categorical axis (steps 0, 2, 3 evenly spaced), text losses were left out
        unsaid, and ``{"step": 99}`` moved a row."""
        d = dict(row)
        d.pop("cell_id")
        step = d["step"]
        where = f"cell {cell_id} " + (f"step {step}" if type(step) is int else "metrics row")
        for column in METRIC_COLUMNS:
            value, whole = d[column], column in ("step", "sharpness_matvecs")
            if (value is not None or column == "step") and (
                    isinstance(value, bool) or not isinstance(value, int if whole else (int, float))):
                raise StoreError(f"{self.path} is damaged: {where} {column} {value!r:.40} is not "
                                 f"{'an integer' if whole else 'a number'}")
        extra = d.pop("extra_json")
        if extra:
            fields = self.json_field(extra, f"{where} extra_json")
            if shadowed := sorted(set(fields) & {"cell_id", *d}):
                raise StoreError(f"{self.path} is damaged: {where} extra_json holds {', '.join(shadowed)}, "
                                 f"a column of its own")
            d.update(fields)
        return d

    # ---- writing results

    def record(self, cell_id: int, result: Any, *, lambda_0: float | None = None,
               driver_id: str | None = None) -> str | None:
        """Write one cell's result in one transaction and return its status.

        With ``driver_id``, only while that driver holds the cell's claim (which is then
        released); otherwise nothing is written and ``None`` returned (the driver was taken
        for dead and the cell handed to another: the cell is recorded once, by that one).

        ``result`` has ``status`` (``finished``/``diverged``/``failed``), ``metrics`` (per-step
        dicts) and ``summary`` (dict); optionally ``error`` (str) and ``worker``. Earlier metric
        rows of the cell (from an interrupted attempt) are replaced.
        """
        status = getattr(result, "status", None)
        if status not in ("finished", "diverged", "failed", "collapsed"):
            raise ValueError(f"cell {cell_id}: result status must be finished, diverged, collapsed or failed, "
                             f"got {status!r}")
        # a collapsed run is a result: its status column says finished (the column's CHECK is that
        # of stores written before "collapsed" existed) and its summary says collapsed, which
        # cells() reports
        reported = status
        status = "finished" if status == "collapsed" else status
        metrics = list(getattr(result, "metrics", None) or [])
        summary = dict(getattr(result, "summary", None) or {})
        error = getattr(result, "error", None)
        worker = getattr(result, "worker", None)
        final = final_metrics(metrics, status)
        best = best_metrics(metrics)
        if lambda_0 is None:
            lambda_0 = summary.get("lambda_0")
        steps_completed = summary.get("steps_completed")
        if steps_completed is None and metrics:
            steps_completed = metrics[-1].get("step")
        values = {
            "status": status,
            "error": error,
            "lambda_0": sql_real(lambda_0),
            "lr_target": sql_real(summary.get("lr_target")),
            **{m: sql_real(final.get(m)) for m in FINAL_METRICS},
            **{m: sql_real(best.get(m)) for m in BEST_METRICS},
            "steps_completed": steps_completed,
            "diverged_at": summary.get("diverged_at"),
            "summary_json": json_text(summary) if summary else None,
            "finished_at": time.time(),
            "wall_time_s": sql_real(summary.get("wall_time_s")),
        }
        if worker is not None:
            values["worker"] = worker
        rows = [metric_row(cell_id, m) for m in metrics]
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM cells WHERE id = ?", (cell_id,)).fetchone() is None:
                raise KeyError(f"no cell {cell_id} in {self.path}")
            if driver_id is not None:
                held = conn.execute("SELECT driver FROM claims WHERE cell_id = ?", (cell_id,)).fetchone()
                if held is None or held[0] != driver_id:
                    return None
                conn.execute("DELETE FROM claims WHERE cell_id = ?", (cell_id,))
            conn.execute("DELETE FROM metrics WHERE cell_id = ?", (cell_id,))
            conn.executemany(
                f"INSERT INTO metrics(cell_id, {', '.join(METRIC_COLUMNS)}, extra_json) "
                f"VALUES ({', '.join('?' * (len(METRIC_COLUMNS) + 2))})", rows)
            conn.execute(f"UPDATE cells SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                         [*values.values(), cell_id])
        return reported

#: The cells columns that hold a number or NULL.
_NUMBER_COLUMNS = ("attempts", "lambda_0", "lr_target", *FINAL_METRICS, *BEST_METRICS, "steps_completed",
                   "diverged_at", "started_at", "finished_at", "wall_time_s")


# the export (one row per cell) lives in its own module; its names are this module's too
from catapult.sweep.store_export import EXPORT_COLUMNS, export_table, write_csv, write_parquet  # noqa: E402
