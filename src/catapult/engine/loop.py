"""The training engine: one loop for full-batch GD, minibatch SGD (+momentum), Adam, AdamW,
RAdam and GI-Adam, with linear, catapult-initialised or persistent catapult warmup.

``run(config, out_dir=None, progress=None) -> RunResult`` trains the model a config describes
(see :mod:`catapult.config`) and records, per step, the training loss/accuracy and learning
rate; every ``eval.sharpness_every`` steps the sharpness; every ``eval.test_every`` steps and at
the end the test loss/accuracy. A diverged run is a result (``status == "diverged"``), never an
exception.

Exact semantics (a batched-ensemble engine must reproduce these to float tolerance)
------------------------------------------------------------------------------------
Seeds. ``seed`` is expanded by ``numpy.random.SeedSequence(seed).generate_state(3)`` into three
independent 32-bit seeds (:mod:`catapult.engine.seeds`): ``init_seed`` (model init), ``data_seed``
(batch order), ``sharpness_seed`` (the eigen-solver's first start vector, and the random vectors
of the spectrum columns: Hutch++ probes, the top-k solve's fresh directions). Each drives its own
``torch.Generator`` (CPU); nothing reads or changes the global RNG. A forward that draws (a
train-mode Dropout of a user's model) draws from the global generators seeded with a fourth word,
:func:`~catapult.engine.seeds.forward_seed`, for the whole run, and the caller's state is put back after.

Init. Under ``torch.random.fork_rng`` with ``torch.manual_seed(init_seed)``, the model is built
on the CPU in float32 (the same initial weights on every device; float64 runs start from the
float32 weights cast up), then moved to ``device``/``dtype``. The data are cast to ``dtype``.

Batches. Full-batch GD (``train.batch_size: null``): every step uses the whole training set in
its stored order. Minibatch SGD with batch size ``B``: epoch ``e`` draws
``perm_e = torch.randperm(n_train, generator=data_gen)`` (epochs in order, one draw each);
batch ``b`` of the epoch is ``perm_e[b*B:(b+1)*B]``; the last incomplete batch is dropped.
Step ``t`` uses the ``t``-th batch of that stream (epoch ``t // (n_train // B)``).

lambda_0. If sharpness is measured at all (``sharpness_every > 0``) or the learning rate is
``"<c>/lambda0"``, ``lambda_0`` = the mean Hessian sharpness at ``theta_0`` over batches ``0 .. k-1``
(``k = eval.lambda0_batches``; null: 10 for minibatch runs as in the paper, 1 for full batch),
batch 0's started from ``randn(P, generator=sharpness_gen)``, the others from batch 0's
eigenvector, before the optimizer exists; ``lr_trgt = c/lambda_0``.

Step ``t = 0, 1, ..., steps`` (row ``t`` describes the parameters ``theta_t`` *before* update ``t``):

1. ``lr_t = schedule(t)`` is already set on the optimizer (at ``t = 0`` before the loop, then
   after every update), each group at ``lr_t * group["lr_mult"]``.
2. Forward on batch ``t`` in train mode: ``train_loss_t``, ``train_accuracy_t``.
3. Divergence: if ``train_loss_t`` is not finite or ``> divergence_factor * train_loss_0``
   (default ``.inf``: only a non-finite loss, the paper's rule), or, at a step that evaluates the
   test set (step 6), any parameter of ``theta_t`` is not finite (failure ``non_finite_weights``:
   entries the batch does not read, e.g. Adam with ``eps: 0`` on a zero-gradient coordinate,
   leave the loss finite), row ``t`` is logged (loss,
   accuracy, lr only) and the run ends with status ``"diverged"``.
4. Backward (``t < steps``): gradients of ``train_loss_t``. With ``schedule.warmup:
   persistent`` the :class:`~catapult.schedules.PersistentCatapultWarmup` is then called with
   batch ``t`` and ``train_loss_t`` and sets ``lr_t`` (re-running the critical-lr search when the
   loss fell below the last search's); row ``t`` logs that lr and its threshold. With
   ``catapult`` the step-0 search ran once before the loop (``build_warmup``).
5. Sharpness, if ``sharpness_every > 0`` and (``t % sharpness_every == 0`` or ``t == steps``):
   on batch ``t`` at ``theta_t``, warm-started from the previous measurement's eigenvector (at
   ``t = 0`` the lambda_0 estimate is reused, not recomputed). With ``eval.sharpness_kind: auto``
   (:mod:`catapult.engine.sharpness_rule`) it is, for Adam-family optimizers, the pre-conditioned
   sharpness of the preconditioner the update ``t`` is about to apply; for RAdam SGD's kind below
   while update ``t`` is un-rectified and the pre-conditioned one after (the row's
   ``sharpness_kind`` says which); for SGD whose groups' lrs differ (muP table form, SμPar)
   ``lambda_max(M^1/2 H M^1/2)``, ``M`` the lr multipliers relative to the first group's, else the Hessian's.
   It never changes parameters, gradients or optimizer state.
6. Test, if (``test_every > 0`` and ``t % test_every == 0``) or ``t == steps``: loss and
   accuracy on the whole test set in eval mode. A non-finite test loss ends the run after row
   ``t`` is logged, with status ``"diverged"`` (failure ``non_finite_test_loss``).
7. Row ``t`` is logged; ``threshold_t = instability_threshold(optimizer)`` at the first param
   group's lr ``lr_t * lr_mult`` (``2/lr_t`` for GD when every ``lr_mult`` is 1, as in the paper's muP);
   RAdam's is ``radam_threshold`` of its update ``t`` (:func:`catapult.engine.threshold` with ``step``).
8. Update (``t < steps``): ``optimizer.step()``; with dynamic sparsity (``model.sparsity.method``
   rigl/gmp) the :class:`~catapult.sparsity.MaskUpdater` then updates the masks if ``t`` is an
   update step and re-applies them; then ``lr_{t+1}`` is set (as ``schedules.attach``'s
   ``scheduler.step()`` sets it: :class:`~catapult.engine.step_lr.StepLRs`).

After the loop (:func:`~catapult.engine.step.final_status`): a finished run whose final training
accuracy is below 1.5x chance is ``"diverged"`` when ``train.accuracy_failure`` applies (auto:
Adam-family optimizers), and one whose outputs on the final batch are all the same
(:func:`~catapult.engine.step.output_collapsed`) is ``"collapsed"``.

So ``metrics`` has ``steps + 1`` rows for a finished run (row ``steps`` = the final model, no
update) and ``summary["steps_completed"]`` updates.

The loop is written once, :func:`train`, on a built :class:`~catapult.engine.build.Run`:
:func:`run` builds one from a config, and the data-parallel
:func:`catapult.engine.distributed.train_ddp` builds one from token shards and passes the
:class:`Processes` that combine its ranks' losses.
"""
from __future__ import annotations

import errno
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import torch
import torch.nn as nn

from catapult import config as cfg
from catapult.arguments import check_flag
from catapult.files import WRITTEN, file_digest
from catapult.writing import write_errors_named, write_text_whole, write_whole
from catapult.run_root import data_root_record
from catapult.losses import IGNORE_INDEX, accuracy_counts, loss_and_counts
from catapult.curvature.rng import fixed_rng
from catapult.engine.build import Run, build_run, resolve_device, threshold
from catapult.engine.seeds import forward_seed
from catapult.engine.sharpness_rule import STEP_KIND_COLUMN, check_spectrum_cadence
from catapult.engine.spectrum_study import with_function_record
from catapult.engine.progress import Progress, progress_mode
from catapult.engine.step_accuracy import StepAccuracies
from catapult.engine.step_lr import StepLRs, StepThresholds
from catapult.engine.trajectories import plot_run
from catapult.engine.step import (NON_FINITE_TEST_LOSS, diverged, evaluates_test, failure_of, measures_sharpness,
                                  new_row, output_collapsed, weights_finite)
from catapult.engine.records import (vocabulary_record, SHARPNESS_CONVERGED_COLUMN, MetricsFile, metric_columns, json_safe, summarize, threshold_label,
                                     warmup_summary)
from catapult.engine.run_dir import (DIGESTED_FILES, RUN_FILES, RUN_MARKERS, RunClaim, RunDirectoryError, check_out_dir,
                                     claim_run_directory, in_run_directory, make_out_dir, record_created, results_kept,
                                     start_manifest)

__all__ = ["RunResult", "run", "train", "Processes", "evaluate", "counted_targets", "eval_chunk_rows", "EVAL_CHUNK_ELEMENTS", "RUN_FILES", "RUN_MARKERS", "RunDirectoryError",
           "check_out_dir", "make_out_dir", "in_run_directory", "RunClaim", "claim_run_directory"]


@dataclass
class RunResult:
    """What :func:`run` returns.

    ``status`` is ``"finished"``, ``"diverged"`` or ``"collapsed"``; ``metrics`` one dict per logged step (keys
    :data:`METRIC_COLUMNS`); ``summary`` the scalars also written to ``summary.json`` (which adds
    ``written``, the digests of the files written before it: :data:`catapult.files.WRITTEN`);
    ``config`` the validated config; ``model`` the final model; ``out_dir`` the run directory
    (``None`` if nothing was written).
    """

    status: str
    metrics: list[dict]
    summary: dict
    config: dict
    model: nn.Module | None = None
    out_dir: Path | None = None



#: Elements of the largest per-row tensor one chunk of :func:`evaluate` may hold (2^26: 256 MiB
#: of float32). A GPT's output is rows x context x vocabulary, so a fixed row count could need
#: terabytes of logits (8,192 windows of the 610M config's 2,048 x 50,257).
EVAL_CHUNK_ELEMENTS = 1 << 26


def eval_chunk_rows(per_row: int) -> int:
    """Rows of one evaluation chunk when a row's largest tensor (its output, or in the batched
    engine its widest activation) has ``per_row`` elements: at most 8,192 rows and
    :data:`EVAL_CHUNK_ELEMENTS` elements, at least one row.

    >>> eval_chunk_rows(10), eval_chunk_rows(32 * 4096), eval_chunk_rows(2048 * 50257)
    (8192, 512, 1)
    """
    return max(1, min(8192, EVAL_CHUNK_ELEMENTS // max(int(per_row), 1)))


def evaluate(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on ``(x, y)`` in eval mode, in chunks of ``chunk`` rows
    (None: :func:`eval_chunk_rows` of a row's output size, measured on the first row).

    The loss is the mean the loss takes over the whole set: each chunk's mean is weighted by the
    targets it counts (:func:`counted_targets`: integer labels other than -100, the ignore index
    :func:`~catapult.losses.cross_entropy` drops; a chunk of float targets by its rows), so a
    token mean with ignored targets is the sum of the counted tokens' losses over their count
    (nan where none counts, as :func:`torch.nn.functional.cross_entropy` gives). The accuracy is
    the hits over the same counted targets (:func:`~catapult.losses.accuracy_counts`: an ignored
    target is neither a hit nor a miss; nan where none counts). The model's train/eval mode is restored.

    >>> from catapult.losses import cross_entropy
    >>> net = nn.Linear(2, 3)
    >>> x, y = torch.randn(4, 2), torch.tensor([0, -100, -100, 2])
    >>> loss, _ = evaluate(net, cross_entropy, x, y, chunk=2)
    >>> abs(loss - cross_entropy(net(x), y).item()) < 1e-6
    True
    """
    loss, acc, _ = _evaluated(model, loss_fn, x, y, chunk)
    return loss, acc


def counted_targets(y: torch.Tensor) -> int:
    """How many targets a loss's mean runs over in ``y``: for integer labels, those other than
    -100 (torch's ``ignore_index``, which :func:`~catapult.losses.cross_entropy` drops); for float
    targets (one per row), the rows.

    >>> counted_targets(torch.tensor([[1, -100], [-100, -100]])), counted_targets(torch.zeros(3, 4))
    (1, 3)
    """
    if y.is_floating_point() or y.is_complex():
        return int(y.shape[0]) if y.dim() else 1
    return int((y != IGNORE_INDEX).sum())


@torch.no_grad()
def _evaluated(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, chunk: int | None
               ) -> tuple[float, float, int]:
    """:func:`evaluate`'s ``(loss, accuracy)`` and the count of counted targets behind both."""
    was_training = model.training
    model.eval()
    try:
        if chunk is None:
            chunk = eval_chunk_rows(model(x[:1]).numel() if x.shape[0] else 1)
        total_loss, counted, total_hits, labelled = 0.0, 0, 0, 0
        for start in range(0, x.shape[0], chunk):
            xb, yb = x[start:start + chunk], y[start:start + chunk]
            out = model(xb)
            weight = counted_targets(yb)
            loss = loss_fn(out, yb).item()
            if weight:  # a chunk whose targets are all ignored has a 0/0 mean and adds nothing
                total_loss += loss * weight
                counted += weight
            hits, kept = accuracy_counts(out, yb)
            total_hits, labelled = total_hits + hits, labelled + kept
        nan = float("nan")
        return (total_loss / counted if counted else nan), (total_hits / labelled if labelled else nan), counted
    finally:
        model.train(was_training)


class Processes:
    """How the processes that train one model combine what the loop sees: here one process,
    which sees everything. :class:`catapult.engine.distributed.DataParallel` is the
    data-parallel form (each process a shard of every batch); the loop itself is the same.

    >>> one = Processes()
    >>> one.mean((0.5, 0.25)), one.all(True), one.writes, one.agreed(lambda: 42)
    ((0.5, 0.25), True, True, 42)
    """

    #: Whether this process writes the run's files and shows its progress.
    writes = True
    #: Whether each process holds a shard of every batch (a :class:`~catapult.engine.build.Run`
    #: built for such processes measures on the union batch: ``Run.distributed``).
    distributed = False

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward (and backward) goes through."""
        return model

    def mean(self, values: tuple[float, ...], rows: int | tuple[int | None, ...] | None = None) -> tuple[float, ...]:
        """The means ``values`` of this process's ``rows`` rows (None: every process holds as
        many) as means over the rows of every process; a tuple gives each value its own count."""
        return values

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds in every process."""
        return flag

    def collapsed(self, outputs: torch.Tensor) -> bool:
        """:func:`~catapult.engine.step.output_collapsed` of the batch whose rows ``outputs``
        are this process's (the collapse rule of the final batch)."""
        return output_collapsed(outputs)

    def evaluate(self, model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """:func:`evaluate` on this process's share ``(x, y)`` of the test set (possibly no rows),
        as the means over every process's rows."""
        rows = x.shape[0]
        loss, acc, counted = _evaluated(model, loss_fn, x, y, None) if rows else (0.0, 0.0, 0)
        # the loss and the accuracy are means over the counted targets of every process
        loss, acc = self.mean((loss, acc), rows=counted)
        return loss, acc

    def before_mask_update(self, updater: Any, t: int) -> None:
        """Called before ``updater.step(t, ...)`` (dynamic sparsity): nothing to combine here."""

    def state_dict(self, model: nn.Module) -> dict:
        """The final weights for ``model.pt``, asked of every process (a sharded model gathers
        them then)."""
        return model.state_dict()

    def agreed(self, work: Callable[[], Any]) -> Any:
        """``work()``, asked of every process (the writing one's run files, nothing on the
        others): here one process, so its result or its exception as it is. Data-parallel: an
        exception on any process is raised on every one (:func:`catapult.engine.every_rank.on_every_rank`),
        so none waits alone in a collective the failed one never reaches."""
        return work()




def run(config: Mapping[str, Any], *, out_dir: str | Path | None = None, progress: Any = None,
        overwrite: bool = False) -> RunResult:
    """Train the model ``config`` describes; see the module docstring for the exact step semantics.

    The run is set up by :func:`~catapult.engine.build.build_run` (config validated and
    completed with defaults, data, model, lambda_0, optimizer, warmup) before anything is
    written. With ``out_dir`` the run directory gets ``config.yaml`` (resolved), ``metrics.csv``
    (streamed; flushed on the first row, then at most once a second
    (``records.METRICS_FLUSH_SECONDS``) and at the end, so a killed run keeps its rows up to the
    last flush), ``summary.json``, ``trajectories.png`` (loss and sharpness vs step, with the
    instability threshold) and ``model.pt`` (the final ``state_dict``, for
    ``catapult spectrum --weights``). ``progress``: ``None``/``"auto"`` (a bar on a terminal,
    plain lines otherwise), ``"bar"``, ``"lines"``, ``"none"`` or a bool.

    ``out_dir`` is checked first (:func:`check_out_dir`): a directory holding anything is
    refused unless ``overwrite``, which replaces its :data:`RUN_FILES`. A run that fails with an
    exception (a full disk included) before its ``model.pt`` is written leaves no partial run
    directory: one it created is removed, in one that existed its run files are. One that fails
    after it (the figure, the summary) keeps ``config.yaml``, ``metrics.csv`` and ``model.pt``
    and raises :class:`~catapult.engine.run_dir.ResultsKept` naming the file that failed.
    """
    started = time.perf_counter()
    overwrite = check_flag("run", "overwrite", overwrite)  # overwrite="no" replaced an earlier run's files
    progress_mode(progress)  # a typo was refused only after the data, model and lambda_0 were built
    valid = cfg.validate(config)
    check_spectrum_cadence(valid)  # before the data are loaded
    from catapult.engine.model_size import check_model_fits, training_fit

    # the weights, their gradients and the optimizer's state (Adam: 2 copies) must fit where it
    # trains: at the data's least shapes now, at its own in build_run (a sweep counts the same)
    check_model_fits(valid, resolve_device(valid["device"]), **training_fit(valid))
    return in_run_directory(out_dir, overwrite, lambda out_path, writing: train(
        build_run(config, trains=True), out_path, progress=progress, started=started, writing=writing, overwrite=overwrite))


def train(setup: Run, out_path: Path | None = None, *, progress: Any = None, started: float | None = None,
          writing: list | None = None, processes: Processes | None = None,
          overwrite: bool | None = None) -> RunResult:
    """The training loop (the module docstring's step semantics) on a built :class:`Run`,
    writing the run files into ``out_path`` (already checked: :func:`in_run_directory`; None
    writes nothing). Before the first file it claims the folder (:func:`claim_run_directory`:
    another process writing a run there is a :class:`RunDirectoryError`; with ``overwrite`` not
    None the folder is checked again, as :func:`check_out_dir` with that flag) and appends the
    claim to ``writing``, whose owner releases it (None: this call does). ``processes``: how the
    processes training this model combine (:class:`Processes`, the default, is one process);
    only a process whose ``processes.writes`` writes and shows progress. ``started``: the
    ``time.perf_counter()`` the summary's wall time counts from (default: now). A Run trains once:
    once it has taken a step, a second ``train`` of it is a ValueError (build another).
    A forward that draws (a train-mode Dropout of a model of yours) draws from the torch generators
    seeded with :func:`~catapult.engine.seeds.forward_seed` of the config's seed, and the caller's
    torch, NumPy and ``random`` states are put back afterwards (:func:`~catapult.curvature.rng.fixed_rng`)."""
    with fixed_rng(forward_seed(setup.config["seed"]), torch.device(setup.device)):
        return _train(setup, out_path, progress=progress, started=started, writing=writing, processes=processes,
                      overwrite=overwrite)


def _train(setup: Run, out_path: Path | None = None, *, progress: Any = None, started: float | None = None,
           writing: list | None = None, processes: Processes | None = None,
           overwrite: bool | None = None) -> RunResult:
    """:func:`train` within its seeded stream."""
    processes = Processes() if processes is None else processes
    if writing is None and out_path is not None and processes.writes:  # the claim is this call's to release
        own: list[RunClaim] = []
        try:
            return _train(setup, out_path, progress=progress, started=started, writing=own, processes=processes,
                          overwrite=overwrite)
        finally:
            for claim in own:
                claim.release()
    started = time.perf_counter() if started is None else started
    if processes.distributed != setup.distributed:  # measurements would see a shard, or wait for ranks
        raise ValueError(f"train: the Run was built with distributed={setup.distributed}, the processes "
                         f"are {type(processes).__name__} (distributed={processes.distributed})")
    if setup._cache.get("trained"):  # its weights, optimizer state and batch stream moved on
        raise ValueError("train: this Run was trained already (its model and optimizer have taken steps, and "
                         "a second train() would start there while its summary reported lambda_0 and the "
                         "initial loss of the first); build a new one with engine.build_run(config)")
    writing = [] if writing is None else writing
    if not processes.writes:
        out_path, progress = None, "none"
    config, model, loss_fn, batches = setup.config, setup.model, setup.loss_fn, setup.batches
    x_test, y_test = (None, None) if setup.test_set is None else setup.test_set
    steps = config["train"]["steps"]
    sharpness_every = config["eval"]["sharpness_every"]
    rule = setup.sharpness
    lambda0_estimate = setup.lambda0_estimate if setup.needs_lambda0 else None
    lambda_0 = None if lambda0_estimate is None else setup.lambda_0
    lr_trgt = setup.lr_target
    optimizer, warmup_rule = setup.optimizer, setup.warmup
    mask_updater = setup.mask_updater  # dynamic sparsity (model.sparsity.method rigl/gmp), else None
    forward = processes.wrap(model)  # same parameters (DDP: gradients averaged over the processes)
    forward = torch.compile(forward) if config["train"].get("compile") else forward
    persistent = warmup_rule.persistent
    # the groups' lr_t * lr_mult, set as schedules.attach's scheduler sets them (step 0's now,
    # lr_{t+1} after update t), and each row's threshold, at a lookup a step (engine.step_lr)
    lrs, thresholds = StepLRs(optimizer, warmup_rule.schedule, last=steps), StepThresholds(optimizer)
    lambda0_all = setup.lambda0_estimates if setup.needs_lambda0 else []
    matvecs_total = sum(int(e.matvecs) for e in lambda0_all)
    unconverged = sum(int(not e.converged) for e in lambda0_all)
    # unconverged solves that stopped below their product budget: the products' precision, not the
    # budget, held them (records.unconverged_advice)
    max_iter = config["eval"]["sharpness_max_iter"]
    below_budget = sum(int(not e.converged and e.matvecs < max_iter) for e in lambda0_all)
    measurements = 0
    spectrum_unconverged = 0  # top-k solves (the eig_i columns) that did not converge
    warm: torch.Tensor | None = setup.start_vector
    cold_start = setup.start_vector if config["eval"]["sharpness_start"] == "cold" else None

    # each row's train_accuracy: a classifier's counted CHUNK steps at a time (engine.step_accuracy),
    # where the processes' means are this process's own values; data-parallel: at once, with the loss
    accuracies = StepAccuracies() if type(processes).mean is Processes.mean else None
    complete = None if accuracies is None else accuracies.resolve

    def start_files() -> MetricsFile | None:
        if out_path is None:
            return None
        writing.append(claim_run_directory(out_path, overwrite))
        for name in RUN_FILES:  # overwrite: nothing of the earlier run survives next to this one
            (out_path / name).unlink(missing_ok=True)
        # the manifest before any run file: a later --overwrite of a run killed before its summary
        # replaces only what it lists (a user's torch.save file put there as model.pt is not)
        start_manifest(out_path)
        # the records' header first, on disk at once: a run killed from here on leaves a folder
        # that reads as a run's (`--overwrite`, `catapult demo` rerun over it)
        record_created(out_path, "metrics.csv", digest=False)
        opened = MetricsFile(out_path / "metrics.csv", metric_columns(config), before_flush=complete)
        record_created(out_path, "config.yaml", digest=False)   # a user may edit it (as the summary's digests)
        with write_errors_named(out_path / "config.yaml"):  # a full disk named no file
            (out_path / "config.yaml").write_text(cfg.dump_config(config))
        return opened

    # an agreed step (Processes.agreed): a failure of the writing process stops every process
    # here, with its error, not in the first step's collective
    metrics_file = processes.agreed(start_files)

    # ---- the loop
    test_every = config["eval"]["test_every"]
    divergence_factor = config["train"]["divergence_factor"]
    reporter = Progress(progress, steps, config["name"], before_line=complete)
    metrics: list[dict] = []
    status, diverged_at, loss_0, collapsed, failure = "finished", None, None, False, None
    parameters = list(model.parameters())
    looped = False  # the loop ran to its end: the progress display then shows the final status
    try:
        for t in range(steps + 1):
            final = t == steps
            x, y = batches.batch(t)
            lr_t = lrs.at(t)
            row = new_row(t, lr_t, thresholds(lr_t, t))
            tests = evaluates_test(t, test_every, steps)
            # theta_t after update t - 1 (theta_0 is the init): finite in every process. Read where
            # the test set is (a weight no batch reads shows there first) and at the end, not every
            # step: a scan of every weight costs 1-3% of a small minibatch step (RESULTS, "Engine
            # overhead"), and a run's loss turns non-finite with any weight its batches do read
            weights_ok = t == 0 or not tests or processes.all(weights_finite(parameters))

            outputs = forward(x)
            loss = loss_fn(outputs, y)
            # one host sync; data-parallel: the whole batch's means, the same in every process
            if accuracies is None:  # the accuracy a mean over every process's counted targets (not -100)
                loss_t, hits, counted = loss_and_counts(loss, outputs, y)
                loss_t, row["train_accuracy"] = processes.mean(
                    (loss_t, hits / counted if counted else float("nan")), rows=(None, counted))
            else:
                loss_t = accuracies.add(row, loss, outputs, y)
            row["train_loss"] = loss_t
            if t == 0:
                loss_0 = loss_t
            if diverged(loss_t, loss_0, divergence_factor) or not weights_ok:
                status, diverged_at, failure = "diverged", t, failure_of(loss_t, weights_ok)
                metrics.append(row)
                if metrics_file is not None:
                    metrics_file.write(row)
                reporter.update(row)
                break

            if final:  # the collapse rule: one output for every input of the final batch
                collapsed = processes.collapsed(outputs)
            if not final:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if persistent is not None:  # Alg. 3: this step's lr (may re-run the search)
                    row["lr"] = float(persistent.step((x, y), loss=loss_t))
                    row["threshold"] = thresholds(row["lr"], t)
            del loss, outputs

            if measures_sharpness(t, sharpness_every, steps):
                kind_t = rule.kind_at(optimizer, t)  # RAdam: hessian until update t is rectified
                if t == 0 and kind_t == "hessian" and lambda0_estimate is not None:
                    est = lambda0_estimate  # already counted
                else:
                    est = rule.measure(model, loss_fn, (x, y), optimizer, warm, kind=kind_t)
                    matvecs_total += int(est.matvecs)
                    unconverged += int(not est.converged)
                    below_budget += int(not est.converged and est.matvecs < max_iter)
                # eval.sharpness_start: cold starts every measurement from the run's own vector
                warm = est.vector if cold_start is None else cold_start
                row["sharpness"] = float(est.value)
                row["sharpness_matvecs"] = int(est.matvecs)
                row[SHARPNESS_CONVERGED_COLUMN] = int(bool(est.converged))  # the row's own mark
                measurements += 1
                if kind_t != rule.kind:  # a kind that changes during the run: say which
                    row[STEP_KIND_COLUMN] = kind_t
                if rule.spectrum is not None:  # eval.spectrum_top_k / eval.trace_matvecs
                    entries, spectrum_converged, short = rule.spectrum(model, loss_fn, (x, y), optimizer, kind=kind_t)
                    row.update(entries)
                    spectrum_unconverged += int(spectrum_converged is False)
                    below_budget += int(short)

            if tests and x_test is not None:
                row["test_loss"], row["test_accuracy"] = processes.evaluate(model, loss_fn, x_test, y_test)

            metrics.append(row)
            if metrics_file is not None:
                metrics_file.write(row)
            reporter.update(row)
            if row["test_loss"] is not None and not math.isfinite(row["test_loss"]):
                status, diverged_at, failure = "diverged", t, NON_FINITE_TEST_LOSS
                break

            if not final:
                setup._cache["trained"] = True
                optimizer.step()
                if mask_updater is not None:
                    processes.before_mask_update(mask_updater, t)
                    mask_updater.step(t, optimizer)
                lrs.apply(t + 1)
        if accuracies is not None:  # every row's accuracy, before the summary reads the last one
            accuracies.resolve()
        looped = True
    finally:
        if not looped:
            reporter.close(status)
        if metrics_file is not None:
            metrics_file.close()

    summary = summarize(
        config, metrics, status=status, diverged_at=diverged_at, lambda_0=lambda_0, lr_trgt=lr_trgt,
        threshold_target=threshold(optimizer, lr_trgt * optimizer.param_groups[0].get("lr_mult", 1.0)),
        n_params=setup.n_params, device=setup.device, sharpness_kind=rule.kind, matvecs_total=matvecs_total,
        measurements=measurements, unconverged=unconverged, wall_time=time.perf_counter() - started,
        spectrum_unconverged=spectrum_unconverged, unconverged_below_budget=below_budget, collapsed=collapsed, lambda0_batches=len(lambda0_all) or None, failure=failure,
        lambda_0_converged=None if lambda_0 is None else all(bool(e.converged) for e in lambda0_all),
    )
    status = summary["status"]  # the paper's accuracy rule and the collapse rule (engine.step.final_status)
    reporter.close(status + (f" ({summary['failure']})" if summary.get("failure") else ""))
    summary.update(warmup_summary(config, metrics, lr_trgt, warmup_rule))
    summary.update(vocabulary_record(setup.model))  # the built vocabulary (a BPE may stop short)
    weights = processes.state_dict(model)

    def write_files() -> None:
        if out_path is None:
            return
        # each file whole or not at all, the summary (the run's verdict) last
        weights_path = out_path / "model.pt"  # `spectrum --weights`
        # with the model keys that change its function: a copy away from its config.yaml is refused too
        recorded = with_function_record(weights, config["model"])
        write_whole(weights_path, lambda fh: _save_weights(recorded, fh, weights_path))
        record_created(out_path, "model.pt")
        # training's results are written: a figure or summary that fails keeps them (ResultsKept)
        with results_kept(out_path, "trajectories.png", RUN_FILES):
            write_whole(out_path / "trajectories.png", lambda fh: plot_run(
                metrics, fh, title=config["name"], status=status, threshold_label=threshold_label(config, rule.kind),
                kind=rule.kind))
            record_created(out_path, "trajectories.png")
        with results_kept(out_path, "summary.json", RUN_FILES):
            # the exact bytes of what came before, so that a later --overwrite replaces these files
            # and no user's file put in their place (config.yaml is left out: a user may edit it)
            written = {name: file_digest(out_path / name) for name in DIGESTED_FILES}
            # and where its data.root was (run_root: a relative root reloads from any directory)
            text = json.dumps(json_safe({**summary, WRITTEN: written, **data_root_record(config["data"]["root"])}),
                              indent=2, allow_nan=False) + "\n"
            write_text_whole(out_path / "summary.json", text)

    # an agreed step: the writing process's failure (a full disk, a folder removed) is every
    # process's error at once; the others waited for it in their closing barrier (gloo: "connection
    # closed", exit 1; NCCL: the watchdog's timeout)
    processes.agreed(write_files)
    return RunResult(status=status, metrics=metrics, summary=summary, config=config, model=model, out_dir=out_path)


def _save_weights(weights: Mapping[str, Any], fh: BinaryIO, path: Path) -> None:
    """``torch.save(weights, fh)``; a failed write is an OSError naming ``path``. torch's zip
    writer reports a full disk as a RuntimeError ("unexpected pos"), which the CLI would show
    as a traceback with exit 1 instead of a message with exit 2."""
    try:
        torch.save(weights, fh)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(errno.EIO, f"could not be written ({first[:200]}); is the disk full?", str(path)) from exc
