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

#: Each public name and where it is defined; imported at its first use (:mod:`catapult.lazy`).
_EXPORTS = {
    "Axis": "catapult.sweep.spec:Axis",
    "SweepSpec": "catapult.sweep.spec:SweepSpec",
    "CellSpec": "catapult.sweep.spec:CellSpec",
    "parse_sweep": "catapult.sweep.spec:parse_sweep",
    "load_sweep": "catapult.sweep.spec:load_sweep",
    "expand": "catapult.sweep.spec:expand",
    "spec_document": "catapult.sweep.spec_document:spec_document",
    "run_sweep": "catapult.sweep.driver:run_sweep",
    "SweepOutcome": "catapult.sweep.driver:SweepOutcome",
    "SweepProgress": "catapult.sweep.driver:SweepProgress",
    "SweepNote": "catapult.sweep.variants:SweepNote",
    "Cell": "catapult.sweep.executors:Cell",
    "CellResult": "catapult.sweep.executors:CellResult",
    "Executor": "catapult.sweep.executors:Executor",
    "LocalExecutor": "catapult.sweep.executors:LocalExecutor",
    "EXECUTORS": "catapult.sweep.executors:EXECUTORS",
    "get_executor": "catapult.sweep.executors:get_executor",
    "run_cell": "catapult.sweep.executors:run_cell",
    "lambda0_key": "catapult.sweep.lambda0:lambda0_key",
    "measure_lambda0": "catapult.sweep.lambda0:measure_lambda0",
    "lambda0_measurement": "catapult.sweep.lambda0:lambda0_measurement",
    "Lambda0": "catapult.sweep.lambda0:Lambda0",
}

__all__ = list(_EXPORTS)

from catapult.lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
del lazy_exports
