"""``catapult sweep | export | plot | transfer | report``: the sweep subcommands.

::

    catapult sweep CONFIG --store PATH [--executor local|ensemble|ray] [--ray-address ADDR]
                   [--chunk-size N] [--ensemble-memory-mb MB] [--no-kernels] [--workers N] [--threads N] [--device D]
                   [--progress MODE] [--dry-run]
                   [key=value ...]
    catapult export STORE [--format csv|parquet] [--aggregate] --out FILE
    catapult plot STORE [--metric test_accuracy] [--x KEY] [--y KEY] [--where KEY=VALUE ...]
                  [--cells ID ...] [--out PNG] [--trajectories-out PNG]
    catapult transfer STORE [--x optimizer.lr] [--series model.density] [--panel model.parametrization]
                      [--metric test_loss] [--where KEY=VALUE ...] [--out PNG] [--json]
    catapult report STORE [--out FILE.html]

Registered by :mod:`catapult.cli` through :func:`register`.
Exit codes: 0 success (diverged cells are results); 1 a cell failed with an error (every other
cell ran and is stored; rerunning the command retries the failed ones); 2 bad input (config, store
holding a different sweep, not a store, missing optional dependency), with the problem on stderr;
130 Ctrl-C (the message gives the command that resumes the sweep).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import stat
import sys
import warnings
from pathlib import Path

from catapult.cli.common import (check_image_file, check_out_file, coord_check_ignored_note, figure_path, output_folders,
                                 store_problem, threads_problem, where_values, workers_problem)
from catapult.config import ConfigError
from catapult.writing import counted, printable

__all__ = ["register", "resume_command"]


def register(subparsers) -> None:
    """Add the ``sweep``, ``export``, ``plot``, ``transfer`` and ``report`` subcommands."""
    from catapult.cli.common import add_config_arguments, path_option
    from catapult.sweep.executors import EXECUTORS

    p = subparsers.add_parser(
        "sweep", help="run (or resume) a grid sweep, e.g. a phase diagram, into a SQLite store",
        description="Run every cell of the config's `sweep:` grid and record the results in one SQLite "
                    "file. Rerunning the same command resumes: finished and diverged cells are kept, "
                    "interrupted and failed ones are redone; a store holding a different sweep is refused. "
                    "Exit code 1 when a cell failed with an error (the others are stored). "
                    "Several sweep processes on one machine may run the same sweep on one store at once: each "
                    "claims the cells it runs, so no cell runs twice (SQLite's locks do not work over NFS "
                    "or SMB: across machines, run one driver with --executor ray --ray-address). "
                    "Grid syntax: lists, {log2: [start, stop, step]}, {range: [...]}, "
                    "{log2_over_lambda0: [start, stop, step]} for optimizer.lr (lr_trgt = 2^x / lambda_0), "
                    "and `seeds: [...]`. Overrides: base keys as for `train`, plus sweep.seeds=[...] and "
                    "sweep.grid.<key>=[...].",
    )
    add_config_arguments(p)
    p.add_argument("--store", metavar="PATH", help="SQLite store (default: runs/<name>/sweep.db)")
    p.add_argument("--executor", choices=list(EXECUTORS), default="local",
                   help="local (the default): one cell after another here; ensemble: cells batched into one "
                        "model; ray: cells as Ray tasks (pip install 'catapult[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to use (e.g. ray://head:10001 or auto; default: a local instance)")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of a local Ray instance (default: all)")
    p.add_argument("--chunk-size", type=int, metavar="N", help="cells per Ray task (default 1)")
    p.add_argument("--ensemble-memory-mb", type=float, metavar="MB",
                   help="ensemble executor: memory budget in MiB of one chunk on the hand-derived "
                        "kernels (the MLP cells they cover; default 2048); a group of cells larger than the budget "
                        "trains in several chunks. torch.func chunks (any other cell, or --no-kernels) "
                        "are sized to the free GPU memory, or a quarter of the RAM on the CPU")
    p.add_argument("--no-kernels", action="store_true",
                   help="ensemble: train every batchable cell on the torch.func engine, also the MLP "
                        "cells the hand-derived kernels (the fast path) would take")
    p.add_argument("--workers", type=int, metavar="N",
                   help="ensemble executor: N processes train chunks side by side (default 1); "
                        "--threads is then per process (default: this machine's threads / N)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the cells, run nothing")
    p.set_defaults(func=_sweep_command)

    p = subparsers.add_parser("export", help="export a sweep store as a table (one row per cell)",
                              description="One row per cell: cell_id, one column per swept key (its dotted "
                                          "name), status, final metrics (train_loss, train_accuracy, test_loss, "
                                          "test_accuracy, sharpness), best metrics, lambda_0, lr_target, ...; cells that "
                                          "logged the spectrum add their last eig_1..eig_k and hessian_trace")
    p.add_argument("store", metavar="STORE", help="sweep store (SQLite file)")
    p.add_argument("--format", choices=("csv", "parquet"),
                   help="default: from --out's suffix (.csv or .txt; .parquet or .pq), csv for a name without "
                        "one; another suffix is refused")
    p.add_argument("--out", type=path_option, metavar="FILE", required=True, help="output file")
    p.add_argument("--aggregate", action="store_true",
                   help="one row per cell over seeds (sweep.seeds): n_seeds, n_finished, n_diverged, n_collapsed, "
                        "status, and <metric>_mean, <metric>_std, <metric>_n (the seeds it is over)")
    p.set_defaults(func=_export_command)

    p = subparsers.add_parser("plot", help="phase-diagram heatmap and cell trajectories from a sweep store",
                              description="Heatmap of a metric over two swept keys (diverged cells hatched, the "
                                          "best cell of an objective outlined; other swept keys averaged over unless fixed with "
                                          "--where) and the trajectories of chosen cells.")
    p.add_argument("store", metavar="STORE", help="sweep store (SQLite file)")
    p.add_argument("--metric", default="test_accuracy", type=_plot_metric, metavar="METRIC",
                   help="cell value (default: final test_accuracy): test_accuracy, test_loss, train_loss, "
                        "train_accuracy, sharpness, best_test_accuracy, best_test_loss, best_train_loss, lambda_0, "
                        "lr_target, wall_time_s, peak_sharpness (the run's largest sharpness, from its summary), or the last logged eig_<i> / hessian_trace of sweeps that log "
                        "the spectrum (eval.spectrum_top_k, eval.trace_matvecs)")
    p.add_argument("--x", metavar="KEY", help="swept key on the x axis (default: optimizer.lr)")
    p.add_argument("--y", metavar="KEY", help="swept key on the y axis (default: schedule.warmup_steps)")
    p.add_argument("--where", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="fix other swept keys, e.g. seed=0 (each key once)")
    p.add_argument("--cells", nargs="*", type=int, metavar="ID",
                   help="cells whose trajectories to draw (default: best, worst and first diverged)")
    p.add_argument("--out", type=path_option, metavar="PNG", help="heatmap file (default: <store>_<metric>.png)")
    p.add_argument("--trajectories-out", type=path_option, metavar="PNG",
                   help="trajectories file (default: <store>_trajectories.png)")
    p.set_defaults(func=_plot_command)

    from catapult.sweep.store_schema import TRANSFER_METRICS

    p = subparsers.add_parser(
        "transfer", help="hyperparameter-transfer curves (metric vs lr per density/width) from a sweep store",
        description="One panel per --panel value (default model.parametrization), one curve per --series value "
                    "(default model.density) of --metric (default final test_loss = validation loss) against "
                    "--x (default optimizer.lr); prints the optimal x per series and how far it drifts, in "
                    "log2 units (the SμPar paper's Figs. 6-7).")
    p.add_argument("store", metavar="STORE", help="sweep store (SQLite file)")
    p.add_argument("--x", default="optimizer.lr", metavar="KEY", help="swept hyperparameter (default optimizer.lr)")
    p.add_argument("--series", metavar="KEY",
                   help="one curve per value (default model.density, if swept); must be a swept key")
    p.add_argument("--panel", metavar="KEY",
                   help="one panel per value (default model.parametrization, if swept); must be a swept key")
    p.add_argument("--metric", default="test_loss", choices=TRANSFER_METRICS, help="default: final test_loss")
    p.add_argument("--where", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="fix other swept keys (each key once)")
    p.add_argument("--out", type=path_option, metavar="PNG", help="figure (default: <store>_transfer.png)")
    p.add_argument("--json", action="store_true", help="print the optima and drifts as JSON instead of a table")
    p.set_defaults(func=_transfer_command)

    p = subparsers.add_parser("report", help="one self-contained HTML page for a sweep store",
                              description="Phase diagrams and trajectories (embedded PNG), the results table and "
                                          "the sweep spec in one HTML file that opens offline.")
    p.add_argument("store", metavar="STORE", help="sweep store (SQLite file)")
    p.add_argument("--out", type=path_option, metavar="FILE.html",
                   help="default: <store>.html; .html or .htm (none: HTML too), another suffix is refused")
    p.set_defaults(func=_report_command)


def _plot_metric(text: str) -> str:
    from catapult.sweep.store_schema import check_plot_metric  # not the plots: numpy, the config (a refusal's 0.4 s)

    try:
        return check_plot_metric(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _fail(command: str, message: str) -> int:
    print(f"catapult {command}: error: {printable(message)}", file=sys.stderr)  # a store's text: no escape sequences
    return 2


def _sweep_command(args: argparse.Namespace) -> int:
    from catapult.sweep.store import StoreError
    from catapult.cli.common import overrides_from_args
    from catapult.sweep.spec import expand, load_sweep
    from catapult.sweep.variants import SweepNote, grid_notes

    options = _executor_options(args)  # flags first: a bad one is refused before the store is touched
    if isinstance(options, str):
        return _fail("sweep", options)
    if args.store is not None and (problem := store_problem(args.store)):  # '' meant the default store
        return _fail("sweep", f"--store: {problem}")
    set_aside: dict = {}
    base, spec = load_sweep(args.config, overrides_from_args(args), set_aside=set_aside)
    if "coord_check" in set_aside:
        print(coord_check_ignored_note("sweep"), file=sys.stderr)
    for note in grid_notes(base, {axis.key: axis.values for axis in spec.axes}):
        print(f"catapult sweep: note: {note}", file=sys.stderr)
    store = Path(args.store) if args.store is not None else Path("runs") / base["name"] / "sweep.db"
    if args.ray_address is not None and not args.dry_run:  # before the store: Ray would retry it for minutes
        from catapult.sweep.ray_executor import ray_address_problem

        problem = ray_address_problem(args.ray_address)
        if problem:
            return _fail("sweep", f"--ray-address {problem}")
    with warnings.catch_warnings():  # printed above as notes
        warnings.simplefilter("ignore", SweepNote)
        # each cell's config checked (~0.2 ms a cell; run_sweep expands again): a bad one is refused
        # before the driver imports torch
        cells = expand(base, spec)
    if args.dry_run:
        from catapult.sweep.driver import refuse_sharded_cells

        refuse_sharded_cells(cells)  # as the sweep does on any machine
        if args.ray_address is None:  # the checks a run makes on this machine (a cluster's machines may differ)
            from catapult.sweep.driver import refuse_impossible_cells, refuse_missing_data

            refuse_impossible_cells(cells)
            refuse_missing_data(cells)
        try:
            plan = _dry_run_store(store, base, spec, cells, data=args.ray_address is None)
        except StoreError as err:
            return _fail("sweep", str(err))
        twins = sum(c.same_as is not None for c in cells)
        runs = (f" ({counted(len(cells) - twins, 'distinct run')}: {counted(twins, 'cell')} "
                f"{'is' if twins == 1 else 'are'} the same run as an earlier cell)") if twins else ""
        print(f"{counted(len(cells), 'cell')} over {', '.join(spec.keys) or '(no swept keys)'}{runs}; all valid; {plan}")
        for c in cells:
            print(f"  cell {c.id}: " + " ".join(f"{k}={v}" for k, v in c.swept.items())
                  + (f"  (the same run as cell {c.same_as}: run once, recorded at both)" if c.same_as is not None else ""))
        return 0
    from catapult.sweep.driver import run_sweep  # torch: after the config and the flags are checked

    try:
        with warnings.catch_warnings():  # printed above as notes
            warnings.simplefilter("ignore", SweepNote)
            outcome = run_sweep(base, spec, store, executor=args.executor, executor_options=options,
                                progress=args.progress)
    except KeyboardInterrupt:
        if not store.exists():  # before the store was made: nothing was written, nothing to export
            print(f"catapult sweep: interrupted before any cell ran ({store} was not written). Rerun with:\n"
                  f"  {resume_command(args, store)}", file=sys.stderr)
            return 130
        print(f"catapult sweep: interrupted. Finished cells are kept in {store}; the cells that were running "
              f"read 'interrupted' (catapult export {shlex.quote(str(store))} --out {_table_path(store)}).\n"
              f"Resume with:\n  {resume_command(args, store)}", file=sys.stderr)
        return 130
    except StoreError as err:
        return _fail("sweep", str(err))
    except ImportError as err:
        return _fail("sweep", str(err))
    c = outcome.counts
    collapsed = _collapsed_cells(store)  # stored as finished; the summary line said only "finished"
    print(f"{counted(outcome.total, 'cell')}: {c['finished']} finished{f' ({collapsed} collapsed)' if collapsed else ''}, "
          f"{c['diverged']} diverged, {c['failed']} failed "
          f"({outcome.ran} run now, {outcome.reused} already in the store"
          + (f", {outcome.unresolved} failed without running: lambda_0 could not be measured"
             if outcome.unresolved else "")
          + f"{', resumed' if outcome.mode == 'resumed' else ''}) in {outcome.wall_time_s:.1f} s")
    if outcome.same_runs:
        pairs = ", ".join(f"{i} = {j}" for i, j in list(outcome.same_runs.items())[:8])
        more = f" and {len(outcome.same_runs) - 8} more" if len(outcome.same_runs) > 8 else ""
        print(f"{len(outcome.same_runs)} {'cells are' if len(outcome.same_runs) > 1 else 'cell is'} the same run as an "
              f"earlier cell (cell {pairs}{more}): each such run ran once and its result is recorded at both")
    for reason, ids in _fallback_groups(outcome.fallbacks):
        print(f"{len(ids)} cell{'s' if len(ids) > 1 else ''} ran on the local engine, not batched "
              f"({_id_list(ids)}): {reason}")
    quoted, table = shlex.quote(str(store)), _table_path(store)
    print(f"store: {store}   next: catapult plot {quoted}  |  catapult report {quoted}  |  "
          f"catapult export {quoted} --out {table}")
    if c["failed"]:  # an error, not a result (a diverged run is one): scripts and CI must see it
        print(f"catapult sweep: {c['failed']} cell{'s' if c['failed'] > 1 else ''} failed with an error; "
              f"`catapult export {quoted} --out {table}` lists each one's error (column error). "
              f"Rerunning the command retries them", file=sys.stderr)
        return 1
    return 0


def _collapsed_cells(store: Path) -> int:
    """How many of the store's finished cells collapsed to a constant output (their summary says
    so; the status column keeps ``finished``)."""
    from catapult.sweep.store import Store

    with Store(store, create=False, readonly=True) as existing:
        return sum(1 for cell in existing.cells() if cell["status"] == "collapsed")


def _dry_run_store(store: Path, base, spec, cells, *, data: bool = False) -> str:
    """What a run would do with ``store``, read without writing: a new store, or a resume of
    the same sweep (with how many cells are done). Raises ``StoreError`` where the run would
    refuse the store: another sweep's, cells numbered differently, not a store at all, or
    (``data``: the cells' data is on this machine) data files changed since it started."""
    from catapult.sweep.spec_document import spec_document
    from catapult.sweep.store import Store, StoreError

    if not store.exists():
        # a file where the store's folder goes: the run refuses it, and the dry run said "all valid"
        folder = next((p for p in store.parents if p.exists() or p.is_symlink()), Path("."))
        if not folder.is_dir():
            raise StoreError(f"{folder} is a file where a directory is needed (the folder of the store {store})")
        return f"a new store would be written at {store}"
    with Store(store, create=False, readonly=True) as existing:
        if existing.check_spec(spec_document(base, spec)) is None:
            return f"{store} holds no sweep yet; this one would start there"
        existing.check_cells(cells)
        if data:
            from catapult.sweep.driver import check_data, data_digests

            check_data(existing, data_digests(cells))
        counts = existing.counts()
    done = sum(counts.get(status, 0) for status in ("finished", "diverged"))
    return f"would resume the sweep in {store} ({done} of {counted(len(cells), 'cell')} already done)"


def _table_path(store) -> str:
    """The export file the sweep's hints name, quoted for a shell: beside the store, as ``plot`` and
    ``report`` write theirs (a bare ``results.csv`` landed in the working directory: the repository's
    root for the README's commands, which keep their files under ``runs/``)."""
    return shlex.quote(str(Path(store).with_name(Path(store).stem + "_cells.csv")))


def _fallback_groups(fallbacks) -> list[tuple[str, list[int]]]:
    """``(reason, cell ids)`` of the cells an executor ran on its fallback engine, one entry per
    reason, in the order first seen."""
    groups: dict[str, list[int]] = {}
    for cell_id, reason in fallbacks:
        groups.setdefault(reason, []).append(cell_id)
    return [(reason, sorted(ids)) for reason, ids in groups.items()]


def _id_list(ids: list[int], shown: int = 8) -> str:
    listed = ", ".join(str(i) for i in ids[:shown])
    return f"cell{'s' if len(ids) > 1 else ''} {listed}" + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _executor_options(args: argparse.Namespace) -> dict | str:
    """The executor options of the flags, or what is wrong with them (a message naming the
    flag): checked before any work, since Ray and the ensemble start only once the sweep runs."""
    import math

    options: dict = {}
    threads = getattr(args, "threads", None)  # --threads comes with cli.add_config_arguments
    if threads is not None:
        problem = threads_problem(threads)
        if problem:
            return f"--threads {problem}"
        options["threads"] = threads  # per cell, in this process or in each Ray worker
    if args.executor == "ray":
        for flag, value in (("--num-cpus", args.num_cpus), ("--chunk-size", args.chunk_size)):
            if value is not None and value < 1:
                return f"{flag} must be >= 1, got {value}"
        if args.ray_address is not None:  # '' too: it is no address
            from catapult.sweep.ray_executor import ray_address_endpoint

            try:
                ray_address_endpoint(args.ray_address)
            except ValueError as err:
                return f"--ray-address {err}"
        options.update(address=args.ray_address, num_cpus=args.num_cpus,
                       chunk_size=1 if args.chunk_size is None else args.chunk_size)
    elif args.ray_address is not None or args.num_cpus is not None or args.chunk_size is not None:
        # given is what counts: --num-cpus 0 or --ray-address '' with another executor was taken silently
        return "--ray-address, --num-cpus and --chunk-size need --executor ray"
    if args.executor == "ensemble":
        if args.ensemble_memory_mb is not None:
            if not (args.ensemble_memory_mb > 0 and math.isfinite(args.ensemble_memory_mb)):
                return f"--ensemble-memory-mb must be a finite number > 0, got {args.ensemble_memory_mb}"
            options["memory_mb"] = args.ensemble_memory_mb
        if args.no_kernels:
            options["kernels"] = False
        if args.workers is not None:
            if problem := workers_problem(args.workers):
                return f"--workers {problem}"
            options["workers"] = args.workers
    elif args.ensemble_memory_mb is not None:
        return "--ensemble-memory-mb needs --executor ensemble"
    elif args.workers is not None:
        return "--workers needs --executor ensemble"
    elif args.no_kernels:
        return "--no-kernels needs --executor ensemble"
    return options


def resume_command(args: argparse.Namespace, store: Path) -> str:
    """The ``catapult sweep`` command line that resumes this sweep: the same config, overrides
    and executor options, with ``--store`` spelled out (shell-quoted). A config that came through
    a pipe (``/dev/stdin``, ``<(...)``'s ``/dev/fd/63``, a named pipe) cannot be read again from
    that path: the command names it ``CONFIG`` and a second line says to give it again (the path
    printed as the command to rerun waited on the terminal, or was not found).

    >>> import argparse
    >>> print(resume_command(argparse.Namespace(config="/dev/null", overrides=["train.steps=9"]), Path("s.db")))
    catapult sweep CONFIG --store s.db train.steps=9
      (CONFIG: the config read from /dev/null, a pipe that is not read again; give the same config, a file or a pipe)
    """
    piped = _not_a_file(args.config)
    words = ["catapult", "sweep", "CONFIG" if piped else str(args.config), "--store", str(store)]
    flags = [("--executor", "executor", "local"), ("--ray-address", "ray_address", None),
             ("--num-cpus", "num_cpus", None), ("--chunk-size", "chunk_size", None),
             ("--ensemble-memory-mb", "ensemble_memory_mb", None), ("--workers", "workers", None),
             ("--threads", "threads", None), ("--device", "device", None), ("--progress", "progress", "auto")]
    for flag, name, default in flags:
        value = getattr(args, name, default)
        if value != default:
            words += [flag, str(value)]
    if getattr(args, "no_kernels", False):
        words.append("--no-kernels")
    words += list(getattr(args, "overrides", []))
    line = shlex.join(words)
    if piped:
        line += (f"\n  (CONFIG: the config read from {args.config}, a pipe that is not read again; give the same "
                 f"config, a file or a pipe)")
    return line


def _not_a_file(path) -> bool:
    """Whether the config ``path`` is no regular file now (a pipe or a terminal, or gone)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return True


def _export_command(args: argparse.Namespace) -> int:
    if problem := store_problem(args.store, reading=True):
        return _fail("export", problem)
    out = Path(args.out)
    named = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(out.suffix.lower())
    if args.format and named and args.format != named:  # a .csv name holding parquet bytes misleads
        return _fail("export", f"--format {args.format} does not match --out {out.name}; "
                               f"name the file .{'parquet' if args.format == 'parquet' else 'csv'}")
    fmt = args.format or named or "csv"
    # a name without a suffix is judged as the format written there: the same command replaces it
    check_out_file("--out", args.out, replaces=(".csv", ".parquet", ".pq"), as_suffix=f".{fmt}")
    if out.suffix and named is None:  # `--out x.xlsx` wrote CSV under a name that promised a spreadsheet
        return _fail("export", f"--out: {out.name} names no format export writes: csv (.csv, .txt) or parquet "
                               f"(.parquet, .pq); give one of those suffixes (none: csv)")
    from catapult.sweep.store import Store, StoreError, write_csv, write_parquet

    try:
        with Store(args.store, create=False) as store:
            store.spec()
            agg = bool(getattr(args, "aggregate", False))
            with output_folders(out, "--out"):
                path = (write_parquet(store, out, aggregate=agg) if fmt == "parquet"
                        else write_csv(store, out, aggregate=agg))
    except (StoreError, ImportError) as err:
        return _fail("export", str(err))
    print(f"wrote {path}")
    return 0


def _plot_command(args: argparse.Namespace) -> int:
    if problem := store_problem(args.store, reading=True):  # before the default names below are made of it
        return _fail("plot", problem)
    # the default names are checked too: a user's file (or a link) there is not catapult's to replace
    stem = Path(args.store).with_suffix("")
    heatmap = args.out if args.out else Path(f"{stem}_{args.metric}.png")
    trajectories = args.trajectories_out if args.trajectories_out else Path(f"{stem}_trajectories.png")
    check_image_file("--out", heatmap)
    check_image_file("--trajectories-out", trajectories)
    if figure_path(heatmap).absolute() == figure_path(trajectories).absolute():  # the second replaced the first
        raise ConfigError([("--trajectories-out", f"{figure_path(trajectories)} is also the heatmap's file "
                                                  f"(--out); give the two figures different names")])
    from catapult.plots.phase import (cell_label, default_trajectory_cells, phase_grid, plot_cell_trajectories,
                                      plot_phase_diagram, unfinished_note)
    import numpy as np

    from catapult.engine.records import is_spectrum_column, spectrum_setting
    from catapult.sweep.store import Store, StoreError
    from catapult.sweep.store_export import last_spectrum, peak_sharpness, sharpness_mark

    store_path = Path(args.store)
    try:
        with Store(store_path, create=False) as store:
            axes = store.axes()
            cells = store.cells()
            if is_spectrum_column(args.metric):
                cells = [{**cell, **last_spectrum(store, cell)} for cell in cells]
                if not any(args.metric in cell for cell in cells):
                    return _fail("plot", f"no cell of {store_path} logged {args.metric} "
                                         f"(it needs {spectrum_setting(args.metric)})")
            elif args.metric == "sharpness":  # whether each final sharpness' solve converged
                cells = [{**cell, **sharpness_mark(store, cell)} for cell in cells]
            elif args.metric == "peak_sharpness":  # a summary value (and its solve's mark), as the export gives it
                cells = [{**cell, **peak_sharpness(cell)} for cell in cells]
            grid = phase_grid(cells, axes, args.metric, args.x, args.y, where=where_values(args.where, axes))
            if not np.isfinite(grid.values).any() and not any(
                    s in ("diverged", "failed") for row in grid.status for s in row):
                # an empty grid with a made-up 0..1 colour bar is no figure of the store
                return _fail("plot", f"no cell of {store_path} has a value of {args.metric}"
                                     + (" (it needs eval.sharpness_every > 0)"
                                        if args.metric in ("sharpness", "peak_sharpness") else ""))
            ids = args.cells if args.cells else default_trajectory_cells(cells, args.metric)
            known = {c["id"]: c for c in cells}
            missing = [i for i in ids if i not in known]
            if missing:  # before the heatmap is written: a refused command writes nothing
                return _fail("plot", f"no cells {missing} in {store_path} (ids 0..{len(cells) - 1})")
            # read before the heatmap is written too: a damaged row (extra_json) left the heatmap behind
            runs = {cell_label(known[i], axes): store.metrics(i) for i in ids}
            out = figure_path(args.out) if args.out else Path(f"{stem}_{args.metric}.png")
            traj = figure_path(args.trajectories_out) if args.trajectories_out else Path(f"{stem}_trajectories.png")
            # both figures' folders are made before the heatmap is written: a --trajectories-out folder
            # that cannot be made (under /proc, no permission) left the heatmap behind an exit 2
            traj_folders = (output_folders(traj, "--trajectories-out" if args.trajectories_out else None) if ids
                            else contextlib.nullcontext())
            with output_folders(out, "--out" if args.out else None), traj_folders:
                plot_phase_diagram(grid, out)
                print(f"wrote {out}")
                note = unfinished_note(grid)
                if note:
                    print(f"catapult plot: warning: {printable(note)}", file=sys.stderr)
                if ids:
                    statuses = {label: known[i]["status"] for label, i in zip(runs, ids)}
                    plot_cell_trajectories(runs, traj, statuses=statuses)
                    print(f"wrote {traj}")
    except (StoreError, ValueError) as err:
        return _fail("plot", str(err))
    return 0


def _transfer_command(args: argparse.Namespace) -> int:
    if problem := store_problem(args.store, reading=True):  # before the default name below is made of it
        return _fail("transfer", problem)
    check_image_file("--out", args.out if args.out else Path(f"{Path(args.store).with_suffix('')}_transfer.png"))
    import json

    from catapult.plots.transfer import (edge_note, plot_transfer, transfer_curves, transfer_summary, transfer_table,
                                         unfinished_note)
    from catapult.sweep.store import Store, StoreError

    store_path = Path(args.store)
    try:
        with Store(store_path, create=False) as store:
            # an explicit --series/--panel must be swept (else every curve merges into one and
            # PNGs overwrite each other); the defaults apply only where they are swept
            axes = store.axes()
            swept = {a["key"] for a in axes}
            series = args.series if args.series is not None else _default_role("model.density", swept, args.x)
            panel = (args.panel if args.panel is not None
                     else _default_role("model.parametrization", swept, args.x, series))
            where = where_values(args.where, axes)
            curves = transfer_curves(store.cells(), axes, x=args.x, series=series, panel=panel,
                                     metric=args.metric, where=where, strict=True)
    except (StoreError, ValueError) as err:
        return _fail("transfer", str(err))
    if not curves.curves:  # every cell pending or interrupted: was a ZeroDivisionError in plot_transfer
        waiting = sum(curves.unfinished.values())
        return _fail("transfer", f"no cell of {store_path}{' that matches --where' if args.where else ''} has a "
                                 f"result yet ({waiting} not run or interrupted); run or resume the sweep first")
    out = figure_path(args.out) if args.out else Path(f"{store_path.with_suffix('')}_transfer.png")
    with output_folders(out):
        plot_transfer(curves, out, title=store_path.stem)
    # the table writes the store's values: a hand-made one's escape sequences cleared the terminal
    print(json.dumps(transfer_summary(curves), indent=2) if args.json else printable(transfer_table(curves)))
    print(f"wrote {out}", file=sys.stderr if args.json else sys.stdout)
    # a swept key on no role was averaged over like a seed: relu and tanh cells made one point, and
    # the table gave the mix's optimum without a word (the phase plot's title names such keys)
    mixed = [f"{a['key']} ({len(a['values'])} values)" for a in axes if len(a["values"]) > 1
             and a["key"] not in {"seed", args.x, series, panel, *where}]
    mixed = mixed and (f"each point is the mean over {', '.join(mixed)}, not over seeds alone, and its optimum that "
                       f"of the mix; fix such a key with --where KEY=VALUE, or draw it with --series or --panel")
    for note in (unfinished_note(curves), edge_note(curves), mixed):
        if note:
            print(f"catapult transfer: warning: {printable(note)}", file=sys.stderr)
    return 0


def _default_role(key: str, swept: set, *taken) -> str | None:
    """A default --series/--panel: ``key`` if it is swept and no other role has it (--x
    model.density leaves the default series empty rather than refused)."""
    return key if key in swept and key not in taken else None


def _report_command(args: argparse.Namespace) -> int:
    if problem := store_problem(args.store, reading=True):  # before the default name below is made of it
        return _fail("report", problem)
    # the default, <store>.html, is the store itself for a store named x.html
    check_out_file("--out", args.out if args.out is not None else Path(args.store).with_suffix(".html"),
                   replaces=(".html", ".htm"), as_suffix=".html")
    suffix = Path(args.out).suffix.lower() if args.out is not None else ".html"
    if suffix not in ("", ".html", ".htm"):  # `--out page.txt` wrote HTML under a name that promised text
        return _fail("report", f"--out: {Path(args.out).name} names no format report writes: HTML (.html, .htm); "
                               f"give one of those suffixes (none: html)")
    from catapult.report import write_report
    from catapult.sweep.store import StoreError

    try:
        with output_folders(args.out if args.out is not None else Path(args.store).with_suffix(".html")):
            out = write_report(args.store, args.out)
    except StoreError as err:
        return _fail("report", str(err))
    print(f"wrote {out}")
    return 0
