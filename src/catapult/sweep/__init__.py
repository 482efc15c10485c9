"""Sweeps: grids over config keys (phase diagrams), executors (local, ensemble, ray) and a
resumable SQLite result store.

    from catapult.sweep import load_sweep, run_sweep
    base, spec = load_sweep("configs/smoke/phase_diagram.yaml")
    outcome = run_sweep(base, spec, "runs/phase.db", executor="local")

Command line: ``catapult sweep CONFIG --store PATH``, ``catapult export``, ``catapult plot``,
``catapult report`` (:mod:`catapult.cli.sweep`). The spec syntax is documented in
:mod:`catapult.sweep.spec`, the executor interface in :mod:`catapult.sweep.executors`, the
store schema in :mod:`catapult.sweep.store`. Executors: :mod:`~catapult.sweep.executors` (local),
:mod:`~catapult.sweep.ensemble` (cells batched into one model; its worker processes are
:mod:`~catapult.sweep.workers`), :mod:`~catapult.sweep.ray_executor` (Ray).
"""
from __future__ import annotations

from catapult.sweep.driver import SweepOutcome, SweepProgress, run_sweep
from catapult.sweep.executors import (
    EXECUTORS,
    Cell,
    CellResult,
    Executor,
    LocalExecutor,
    get_executor,
    run_cell,
)
from catapult.sweep.lambda0 import lambda0_key, measure_lambda0
from catapult.sweep.spec import Axis, CellSpec, SweepSpec, expand, load_sweep, parse_sweep
from catapult.sweep.spec_document import spec_document
from catapult.sweep.variants import SweepNote

__all__ = [
    "Axis",
    "SweepSpec",
    "CellSpec",
    "parse_sweep",
    "load_sweep",
    "expand",
    "spec_document",
    "run_sweep",
    "SweepOutcome",
    "SweepProgress",
    "SweepNote",
    "Cell",
    "CellResult",
    "Executor",
    "LocalExecutor",
    "EXECUTORS",
    "get_executor",
    "run_cell",
    "lambda0_key",
    "measure_lambda0",
]
