"""The engine: one run, from a validated config to its records.

* :mod:`~catapult.engine.build`: :func:`build_run` -- a run's set-up, written once (device,
  dtype, seeds, data, batch stream, model, loss, lambda_0, optimizer, warmup rule);
* :mod:`~catapult.engine.step`: the step semantics both engines share (row, divergence rule,
  measurement cadence);
* :mod:`~catapult.engine.step_lr`: each step's lr and threshold in the local loop, set as
  ``schedules.attach``'s scheduler would set them, at a lookup a step;
* :mod:`~catapult.engine.step_accuracy`: each row's training accuracy in the local loop, a
  classifier's counted a chunk of steps at a time;
* :mod:`~catapult.engine.loop`: :func:`run` -- the step semantics (its docstring is the
  contract a batched engine reproduces) and the training loop, :func:`train`, which
  :mod:`~catapult.engine.distributed`'s data-parallel runs use too;
* :mod:`~catapult.engine.distributed`, :mod:`~catapult.engine.fsdp`: one model across
  processes (``catapult train-ddp``), copied (DDP) or sharded (``train.fsdp``);
* :mod:`~catapult.engine.records`: the metrics rows, ``metrics.csv`` and the summary;
* :mod:`~catapult.engine.progress`, :mod:`~catapult.engine.trajectories`: a run's progress
  display and its ``trajectories.png``.
"""
#: Each public name and where it is defined; imported at its first use (:mod:`catapult.lazy`).
_EXPORTS = {
    "Run": "catapult.engine.build:Run",
    "build_run": "catapult.engine.build:build_run",
    "assemble_run": "catapult.engine.build:assemble_run",
    "run": "catapult.engine.loop:run",
    "train": "catapult.engine.loop:train",
    "Processes": "catapult.engine.loop:Processes",
    "RunResult": "catapult.engine.loop:RunResult",
    "evaluate": "catapult.engine.loop:evaluate",
    "RunData": "catapult.engine.build:RunData",
    "BatchStream": "catapult.engine.build:BatchStream",
    "batch_stream": "catapult.engine.build:batch_stream",
    "build_augment": "catapult.engine.build:build_augment",
    "Warmup": "catapult.engine.build:Warmup",
    "SharpnessRule": "catapult.engine.build:SharpnessRule",
    "seeds": "catapult.engine.build:seeds",
    "resolve_device": "catapult.engine.build:resolve_device",
    "load_data": "catapult.engine.build:load_data",
    "load_data_once": "catapult.engine.build:load_data_once",
    "build_model": "catapult.engine.build:build_model",
    "check_model_fits": "catapult.engine.build:check_model_fits",
    "check_labels": "catapult.engine.build:check_labels",
    "build_optimizer": "catapult.engine.build:build_optimizer",
    "build_schedule": "catapult.engine.build:build_schedule",
    "build_warmup": "catapult.engine.build:build_warmup",
    "lambda0_batches": "catapult.engine.build:lambda0_batches",
    "search_delta": "catapult.engine.build:search_delta",
    "search_lr_start": "catapult.engine.build:search_lr_start",
    "search_rtol": "catapult.engine.build:search_rtol",
    "sharpness_rule": "catapult.engine.build:sharpness_rule",
    "solver_options": "catapult.engine.build:solver_options",
    "threshold": "catapult.engine.build:threshold",
    "MODELS": "catapult.engine.build:MODELS",
    "OPTIMIZERS": "catapult.engine.build:OPTIMIZERS",
    "ADAPTIVE": "catapult.engine.build:ADAPTIVE",
    "WARMUPS": "catapult.engine.build:WARMUPS",
    "METRIC_COLUMNS": "catapult.engine.records:METRIC_COLUMNS",
    "metric_columns": "catapult.engine.records:metric_columns",
    "MetricsFile": "catapult.engine.records:MetricsFile",
    "write_metrics": "catapult.engine.records:write_metrics",
    "read_metrics": "catapult.engine.records:read_metrics",
    "summarize": "catapult.engine.records:summarize",
    "warmup_summary": "catapult.engine.records:warmup_summary",
    "threshold_label": "catapult.engine.records:threshold_label",
    "format_summary": "catapult.engine.records:format_summary",
}

__all__ = list(_EXPORTS)

from catapult.lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
del lazy_exports
