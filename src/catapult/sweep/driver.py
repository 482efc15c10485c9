"""The sweep driver: expand, open (or resume) the store, resolve lambda_0, run, record.

:func:`run_sweep` is what ``catapult sweep`` does:

1. expand the grid and validate every cell (:func:`catapult.sweep.spec.expand`), build the
   executor (a missing optional dependency fails here), and, where the executor runs cells on
   this machine, refuse cells that ask a CUDA device it lacks or whose model cannot fit its
   memory with the data it trains on: nothing is written before this;
2. open the store: a new sweep writes its spec and one ``pending`` row per cell; the same
   spec resumes; a different spec is refused (:class:`catapult.sweep.store.SpecChanged`
   names what changed), as is a resume whose data files changed (:func:`check_data`); this
   driver registers itself and keeps a heartbeat;
3. for cells still to run (pending, interrupted, failed): lambda_0 for each distinct
   architecture/seed/data (:func:`catapult.sweep.lambda0.lambda0_key`), from the store's
   cache or measured once and cached; each cell's ``"2^x/lambda0"`` becomes an absolute lr;
4. hand the cells to the executor, each *claimed* atomically as it is handed out
   (:meth:`catapult.sweep.store.Store.claim`), and record every result in its own
   transaction the moment it arrives, updating one progress bar for the whole sweep;
5. when no cell is left to claim but other drivers still hold some, wait for them, taking
   over the cells of any driver that dies (kill -9), so the sweep is complete on return;
6. a cell whose config is an earlier cell's (:attr:`catapult.sweep.spec.CellSpec.same_as`, the
   dense reference of a ``[rigl, gmp]`` x density grid) is never run: once the earlier cell is
   recorded, its result (metrics, summary with ``same_run_as``, status or error) is recorded at
   this cell too, so both grid positions resolve to one run (``--where``, export, plots); a
   resume copies what an interrupted sweep had not.

Any number of drivers may run the same sweep on one store: each cell is computed by one of
them and recorded exactly once. Finished and diverged cells are results and are never
recomputed; failed cells are retried once by a driver started after the failure. On an
exception (Ctrl-C) the driver drops its claims: its unfinished cells read ``interrupted``.

Parts: the refusals before any work (:mod:`catapult.sweep.cell_refusals`), the progress display
(:mod:`catapult.sweep.progress`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from catapult import config as cfg
from catapult.sweep.cell_refusals import refuse_impossible_cells, refuse_missing_data, refuse_sharded_cells
from catapult.sweep.claims import HEARTBEAT_S, Heartbeat
from catapult.sweep.progress import PROGRESS_MODES, SweepProgress
from catapult.sweep.store import DONE_STATUSES, SpecChanged, Store, StoreError
from catapult.sweep.store_rows import json_text
from catapult.sweep.store_file import identify
from catapult.sweep.executors import Cell, CellResult, Executor, get_executor, torch_threads, worker_name
from catapult.sweep.lambda0 import lambda0_inputs, lambda0_key, lambda0_measurement, needs_lambda0, resolve_cell_lr
from catapult.sweep.spec import SweepSpec, expand
from catapult.sweep.spec_document import spec_document
from catapult.sweep.variants import grid_notes

# SweepProgress (progress.py) and the refuse_* checks (cell_refusals.py) are this module's names too
__all__ = ["run_sweep", "SweepOutcome", "SweepProgress", "axes_metadata", "refuse_impossible_cells",
           "refuse_missing_data", "refuse_sharded_cells"]


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: ``mode`` ``"new"``/``"resumed"``, ``counts`` per status
    after the run, ``ran`` cells run now, ``reused`` results found in the store,
    ``lambda0_measured`` lambda_0 measurements made now, ``wall_time_s``; ``unresolved`` cells
    recorded ``failed`` now without running (their lambda_0 could not be measured); ``fallbacks`` the
    ``(cell_id, reason)`` of cells an executor ran another way than asked (the ensemble
    executor's cells on the local engine)."""

    store: Path
    mode: str
    total: int
    counts: dict
    ran: int
    reused: int
    lambda0_measured: int
    wall_time_s: float
    ran_ids: list = field(default_factory=list)
    fallbacks: list = field(default_factory=list)
    unresolved: int = 0
    #: ``{cell id: id of the earlier cell it is the same run as}`` (:attr:`CellSpec.same_as`):
    #: such a cell is never run; the other's result is recorded at it too
    same_runs: dict = field(default_factory=dict)
    #: how many of those were recorded now (copied from the run of the other cell)
    copied: int = 0
    #: the grid's notes (:func:`catapult.sweep.variants.grid_notes`), each also issued as a
    #: :class:`~catapult.sweep.variants.SweepNote` warning: what ``catapult sweep`` prints
    notes: list = field(default_factory=list)


def axes_metadata(spec: SweepSpec) -> list[dict]:
    """Per-axis data stored with the sweep (for figures): key, values, labels, form, title."""
    return [dict(key=a.key, values=list(a.values), labels=list(a.labels), form=a.form, title=a.title,
                 exponents=list(a.exponents) if a.exponents is not None else None) for a in spec.axes]


def _failed(error: str) -> CellResult:
    return CellResult("failed", [], {}, error=error)


def _check_driver_options(progress: Any, poll_s: Any, heartbeat_s: Any) -> None:
    """ValueError naming ``progress``, ``poll_s`` or ``heartbeat_s`` of :func:`run_sweep` when it cannot
    work as documented, before any work: ``progress="line"`` showed nothing, ``poll_s=nan`` or ``-1``
    raised from ``time.sleep`` once the driver waited for another's cells, ``heartbeat_s=nan`` or ``0``
    wrote the heartbeat in a busy loop (``Event.wait`` returns at once), and one of ``120`` beat after
    the lease of :data:`~catapult.sweep.claims.LEASE_S` = 60 s ran out, which let another driver take
    the cells of a live one and run them a second time."""
    from catapult.arguments import check_real
    from catapult.sweep.claims import LEASE_S

    if progress is not None and progress not in PROGRESS_MODES:
        raise ValueError(f"run_sweep: progress must be one of {', '.join(PROGRESS_MODES)}; got {progress!r}")
    check_real("run_sweep", "poll_s", poll_s, low=0.0, low_open=True)
    check_real("run_sweep", "heartbeat_s", heartbeat_s, low=0.0, high=LEASE_S / 2, low_open=True)


def run_sweep(
    base: Mapping[str, Any],
    spec: SweepSpec,
    store_path: str | Path,
    *,
    executor: str | Executor = "local",
    executor_options: Mapping[str, Any] | None = None,
    run_fn: Callable[..., Any] | None = None,
    lambda0_fn: Callable[[Mapping[str, Any]], Any] | None = None,
    progress: str = "auto",
    stream=None,
    poll_s: float = 1.0,
    heartbeat_s: float = HEARTBEAT_S,
) -> SweepOutcome:
    """Run (or resume) a sweep into the SQLite store at ``store_path``; see the module doc.

    ``executor`` is a name in :data:`catapult.sweep.executors.EXECUTORS` (built with ``run_fn``
    and ``executor_options``) or an :class:`Executor` instance. ``run_fn`` defaults to
    :func:`catapult.engine.run`; ``lambda0_fn(config)`` to
    :func:`catapult.sweep.lambda0.lambda0_measurement`, called here in the driver at the executor's
    ``threads`` (if it has that attribute), so lambda_0 is the same number whichever executor
    and driver thread count run the sweep; it returns lambda_0, or a ``(lambda_0, converged)`` pair
    (a :class:`~catapult.sweep.lambda0.Lambda0`), whose mark the store's cache keeps (a bare
    number: unknown) and the export gives the cells whose lr it resolved (``lambda_0_converged``). Raises :class:`catapult.config.ConfigError`
    for an invalid cell and :class:`catapult.sweep.store.SpecChanged` for a store holding another
    sweep, both before any cell runs. ``poll_s``: how often to look at cells other drivers
    hold while waiting for them; ``heartbeat_s``: see :class:`catapult.sweep.claims.Heartbeat`.
    ``progress``: ``"auto"``, ``"bar"``, ``"lines"`` or ``"none"`` (:class:`SweepProgress`).
    """
    started = time.perf_counter()
    _check_driver_options(progress, poll_s, heartbeat_s)
    cells = expand(base, spec)  # its notes: SweepNote warnings (and outcome.notes)
    notes = grid_notes(base, {axis.key: axis.values for axis in spec.axes})
    refuse_sharded_cells(cells)  # on any machine, before the store is written
    by_id = {c.id: c for c in cells}
    document = spec_document(base, spec)
    if isinstance(executor, Executor):
        engine = executor
    else:
        engine = get_executor(executor, run_fn=run_fn, **dict(executor_options or {}))
    digests: list[dict] = []   # where the cells run elsewhere (ray), their data is not read here
    if engine.runs_here:
        try:
            refuse_impossible_cells(cells)
            refuse_missing_data(cells)
            digests = data_digests(cells)
        except (cfg.ConfigError, FileNotFoundError):
            engine.close()
            raise
    lambda0_fn = lambda0_fn or lambda0_measurement
    name = base.get("name") or "sweep"
    try:
        # another sweep's store is refused before it is opened for writing (which upgrades a
        # store of catapult 0.1.0); any other file is refused by the writer's own check
        if Path(store_path).is_file() and identify(store_path) != "foreign":
            with Store(store_path, create=False) as existing:
                existing.check_spec(document)
                check_data(existing, digests)
        with Store(store_path) as store:
            mode = store.open_sweep(document, cells, axes=axes_metadata(spec))
            check_data(store, digests, record=True)
            driver_id = store.register_driver()
            since = time.time()  # failures recorded before this are retried, later ones are final
            heartbeat = Heartbeat(store.path, driver_id, heartbeat_s)
            todo = store.todo()
            same_runs = {c.id: c.same_as for c in cells if c.same_as is not None}
            copies = [cell_id for cell_id in todo if cell_id in same_runs]  # recorded after the runs
            todo = [cell_id for cell_id in todo if cell_id not in same_runs]
            copied = 0
            counts = store.counts()
            report = SweepProgress(len(cells), counts, progress, stream, name)
            if todo or copies:
                report.start(len(todo) + len(copies), engine.describe())
            engine.progress = lambda text: report.message(f"[{name}] {text}")
            ran_ids: list[int] = []
            unresolved = 0
            try:
                # ---- lambda_0, once per architecture/seed/data
                measured = 0
                values: dict[str, float | None] = {}
                errors: dict[str, str] = {}
                runnable: list[Cell] = []
                for cell_id in todo:
                    cell = by_id[cell_id]
                    lam = None
                    if needs_lambda0(cell.config):
                        key = lambda0_key(cell.config)
                        if key not in values and key not in errors:
                            cached = store.get_lambda0(key)
                            if cached is None:
                                seed = cell.config["seed"]
                                report.message(f"[{name}] measuring lambda_0 (seed {seed}, key {key})")
                                try:
                                    # at the executor's thread count, so lambda_0 does not depend on
                                    # the driver's (float reductions round differently per thread count)
                                    with torch_threads(getattr(engine, "threads", None)):
                                        cached, mark = _with_mark(lambda0_fn(cell.config))
                                except Exception as err:  # recorded as the cells' failure
                                    errors[key] = f"measuring lambda_0 failed: {type(err).__name__}: {err}"
                                    cached = None
                                else:
                                    measured += 1
                                    if math.isfinite(cached) and cached > 0:
                                        # another driver may have stored its measurement first
                                        cached = store.put_lambda0(key, cached, lambda0_inputs(cell.config),
                                                                   converged=mark)
                                    else:
                                        errors[key] = (f"lambda_0 = {cached!r} is not a positive finite number; "
                                                       f"cannot resolve optimizer.lr={cell.config['optimizer']['lr']!r}")
                                        cached = None
                                report.message(f"[{name}] lambda_0 = {cached!r}" if cached is not None
                                               else f"[{name}] {errors.get(key)}")
                            values[key] = cached
                        if key in errors:
                            if store.claim(cell_id, driver_id, retry_failed_before=since):
                                status = store.record(cell_id, _failed(errors[key]), driver_id=driver_id)
                                if status is not None:
                                    unresolved += 1
                                    report.update(cell_id, status, cell.swept, _failed(errors[key]))
                            continue
                        lam = values[key]
                    runnable.append(Cell(cell.id, resolve_cell_lr(cell.config, lam), dict(cell.swept), lam))

                # ---- run and record, one transaction per result, in rounds: a round runs what
                # this driver can claim; then it waits for cells other drivers hold (or took
                # over from a dead one) until none is left
                report.started = time.perf_counter()  # ETA from cell throughput, not lambda_0 time
                lambdas = {c.id: c.lambda_0 for c in runnable}
                settled: set[int] = set()  # ids this driver ran or saw finished by another
                waiting_said = False
                while True:
                    left = [c for c in runnable if c.id not in settled]
                    claimed: set[int] = set()
                    took = len(settled)

                    def handed_out():
                        # a cell is claimed when the executor takes it (lazily: the local executor
                        # takes one at a time, so 'running' is the cell being trained)
                        for c in left:
                            if store.claim(c.id, driver_id, retry_failed_before=since, worker=worker_name()):
                                claimed.add(c.id)
                                yield c

                    if left:
                        for cell_id, result in engine.run(handed_out()):
                            if cell_id not in claimed:
                                raise RuntimeError(f"executor {engine.name!r} returned cell {cell_id}, which it "
                                                   "was not given or returned twice")
                            claimed.discard(cell_id)
                            settled.add(cell_id)
                            status = store.record(cell_id, result, lambda_0=lambdas[cell_id], driver_id=driver_id)
                            if status is None:
                                report.message(f"[{name}] cell {cell_id}: another driver took it over while "
                                               "this one was unresponsive; its result there counts")
                                continue
                            ran_ids.append(cell_id)
                            report.update(cell_id, status, by_id[cell_id].swept, result)
                        if claimed:
                            raise RuntimeError(f"executor {engine.name!r} never returned cells {sorted(claimed)}; "
                                               "they stay unfinished and a resume redoes them")
                    rows = {c["id"]: c for c in store.cells([c.id for c in left])}
                    for c in left:
                        row = rows[c.id]
                        if row["status"] in DONE_STATUSES or (
                                row["status"] == "failed" and (row["finished_at"] or 0.0) >= since):
                            settled.add(c.id)
                    others = [c.id for c in left if c.id not in settled]
                    if not others:
                        break
                    if len(settled) == took:  # nothing to take now: the rest is held by live drivers
                        if not waiting_said:
                            report.message(f"[{name}] waiting for {len(others)} cell{'' if len(others) == 1 else 's'} that other drivers "
                                           "are running on this store")
                            waiting_said = True
                        time.sleep(poll_s)
                # ---- cells that are another cell's run: that cell's result, recorded here too
                for cell_id in copies:
                    source = store.cell(same_runs[cell_id])
                    if source["status"] not in (*DONE_STATUSES, "failed"):
                        continue  # another driver runs it, and copies it when done
                    if not store.claim(cell_id, driver_id, retry_failed_before=since):
                        continue  # another driver copies it
                    result = _copied_result(store, source, by_id[cell_id].config["name"])
                    status = store.record(cell_id, result, lambda_0=source["lambda_0"], driver_id=driver_id)
                    if status is not None:
                        copied += 1
                        report.update(cell_id, status, by_id[cell_id].swept, result)
            finally:
                engine.progress = None
                report.close()
                heartbeat.stop()
                store.release_driver(driver_id)
            final_counts = store.counts()
    finally:
        engine.close()
    fallbacks = list(getattr(engine, "fallbacks", []))
    done_before = sum(counts.get(s, 0) for s in DONE_STATUSES)
    return SweepOutcome(
        store=Path(store_path), mode=mode, total=len(cells), counts=final_counts, ran=len(ran_ids),
        reused=done_before, lambda0_measured=measured, wall_time_s=time.perf_counter() - started,
        ran_ids=ran_ids, fallbacks=fallbacks, unresolved=unresolved, same_runs=same_runs, copied=copied,
        notes=notes,
    )


#: The meta row of a store that holds :func:`data_digests` of the sweep's data when it started.
DATA_META = "data_json"


def data_digests(cells) -> list[dict]:
    """For each distinct ``(data.name, data.root)`` of ``cells`` whose files are yours (not the
    embedded digits or Shakespeare: :func:`catapult.data.data_files`), ``{"name", "root",
    "files": {file name: SHA-256 of its bytes}}``: what a resumed sweep's data must still be."""
    from catapult.data import data_files
    from catapult.files import file_digest

    out, seen = [], set()
    for cell in cells:
        data = cell.config["data"]
        key = (data["name"], data["root"])
        if key in seen:
            continue
        seen.add(key)
        files = {}
        for path in data_files(*key):
            try:
                files[path.name] = file_digest(path)
            except OSError:   # unreadable: the cells' loader says so, naming it
                continue
        if files:
            out.append({"name": key[0], "root": key[1], "files": files})
    return out


def check_data(store: Store, digests: list[dict], *, record: bool = False) -> None:
    """Raise :class:`catapult.sweep.store.SpecChanged` where a data file of ``digests``
    (:func:`data_digests`) has other bytes than when ``store``'s sweep started, or a file came or
    went: the cells run now would train on other data than the stored ones, under the same
    lambda_0, cached from the first data (a corpus edited between an interrupted sweep and its
    resume was mixed in without a word). ``record``: keep ``digests`` in a store without them."""
    text = store.meta(DATA_META)
    if text is None:
        if record and digests:
            with store.transaction() as conn:
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
                             (DATA_META, json_text(digests, canonical=True)))
        return
    stored = {}
    for i, d in enumerate(store.json_field(text, f"meta {DATA_META}", list)):
        # a hand-edited or damaged entry is refused: skipped, its data's check was skipped without a word
        problem = ("is not an object" if not isinstance(d, dict) else
                   "has no text name" if not isinstance(d.get("name"), str) else
                   "has a root that is neither text nor null" if not isinstance(d.get("root"), (str, type(None))) else
                   "has files that are not an object" if not isinstance(d.get("files"), dict) else
                   "has a file digest that is not text" if not all(isinstance(v, str) for v in d["files"].values())
                   else None)
        if problem:
            raise StoreError(f"{store.path} is damaged: meta {DATA_META} entry {i} {problem} ({json_text(d)[:60]})")
        stored[d["name"], d["root"]] = d["files"]
    changes = []
    for entry in digests:
        old = stored.get((entry["name"], entry["root"]))
        if not isinstance(old, dict):
            continue
        where = f"data.root={entry['root']}" if entry["root"] is not None else f"data.name={entry['name']}"
        new = entry["files"]
        changes += [f"{where}: {name} {'is new' if name not in old else 'was removed' if name not in new else 'has other bytes'}"
                    f" since the sweep started" for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    if changes:
        raise SpecChanged(store.path, changes, advice=(
            "Its stored cells trained on the data as it was (and the lr of '2^x/lambda0' cells is resolved by the "
            "lambda_0 measured on it): put those files back to resume, or use a new --store path for the new data."))


def _with_mark(measured: Any) -> tuple[float, bool | None]:
    """``(lambda_0, converged)`` from what a ``lambda0_fn`` returned: a number (mark unknown) or a
    ``(value, converged)`` pair such as :class:`~catapult.sweep.lambda0.Lambda0`."""
    if isinstance(measured, tuple) and len(measured) == 2:
        value, mark = measured
        return float(value), None if mark is None else bool(mark)
    return float(measured), None


def _copied_result(store: Store, source: Mapping[str, Any], name: str) -> CellResult:
    """The recorded result of the cell row ``source`` as that of a cell named ``name`` that is
    the same run (:attr:`catapult.sweep.spec.CellSpec.same_as`): its summary names that cell and
    says ``same_run_as``; a failed source gives a failure naming it (retried with it)."""
    if source["status"] == "failed":
        return CellResult("failed", [], {}, error=f"the same run as cell {source['id']}, which failed: {source['error']}")
    summary = {**(source["summary"] or {}), "name": name, "same_run_as": source["id"]}
    return CellResult(source["status"], store.metrics(source["id"]), summary, worker=source["worker"])
