"""The engine: one run, from a validated config to its records.

* :mod:`~catapult.engine.build`: :func:`build_run` -- a run's set-up, written once (device,
  dtype, seeds, data, batch stream, model, loss, lambda_0, optimizer, warmup rule);
* :mod:`~catapult.engine.step`: the step semantics both engines share (row, divergence rule,
  measurement cadence);
* :mod:`~catapult.engine.loop`: :func:`run` -- the step semantics (its docstring is the
  contract a batched engine reproduces) and the training loop, :func:`train`, which
  :mod:`~catapult.engine.distributed`'s data-parallel runs use too;
* :mod:`~catapult.engine.distributed`, :mod:`~catapult.engine.fsdp`: one model across
  processes (``catapult train-ddp``), copied (DDP) or sharded (``train.fsdp``);
* :mod:`~catapult.engine.records`: the metrics rows, ``metrics.csv`` and the summary;
* :mod:`~catapult.engine.progress`, :mod:`~catapult.engine.trajectories`: a run's progress
  display and its ``trajectories.png``.
"""
from catapult.engine.build import (ADAPTIVE, MODELS, OPTIMIZERS, WARMUPS, BatchStream, Run, RunData,
                                   SharpnessRule, Warmup, assemble_run, batch_stream, build_augment, build_model, check_model_fits, build_optimizer, build_run,
                                   build_schedule, build_warmup, lambda0_batches, load_data, load_data_once, resolve_device, search_delta,
                                   search_lr_start, search_rtol, seeds, sharpness_rule, solver_options, threshold)
from catapult.engine.loop import Processes, RunResult, evaluate, run, train
from catapult.engine.records import (METRIC_COLUMNS, MetricsFile, metric_columns, format_summary, read_metrics, summarize,
                                     threshold_label, warmup_summary, write_metrics)

__all__ = [
    "Run", "build_run", "assemble_run", "run", "train", "Processes", "RunResult", "evaluate", "RunData", "BatchStream", "batch_stream", "build_augment",
    "Warmup", "SharpnessRule",
    "seeds", "resolve_device", "load_data", "load_data_once", "build_model", "check_model_fits", "build_optimizer", "build_schedule", "build_warmup",
    "lambda0_batches", "search_delta", "search_lr_start", "search_rtol", "sharpness_rule", "solver_options", "threshold",
    "MODELS", "OPTIMIZERS", "ADAPTIVE", "WARMUPS",
    "METRIC_COLUMNS", "metric_columns", "MetricsFile", "write_metrics", "read_metrics", "summarize", "warmup_summary",
    "threshold_label", "format_summary",
]
