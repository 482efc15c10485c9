"""A run's records: the per-step metrics rows, ``metrics.csv``, and the summary scalars.

Both engines (:mod:`catapult.engine.loop` and the batched one in :mod:`catapult.sweep`) build
their rows with :data:`METRIC_COLUMNS` and their summaries with :func:`summarize` and
:func:`warmup_summary`, so a cell's record does not depend on which engine trained it.
"""
from __future__ import annotations

import csv
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from catapult.analysis import detect_catapults
from catapult.arguments import check_real
from catapult.writing import counted, csv_cell, csv_text, write_errors_named

__all__ = ["METRIC_COLUMNS", "metric_columns", "is_spectrum_column", "spectrum_setting", "write_metrics", "read_metrics", "MetricsFile", "json_safe", "finite",
           "summarize", "warmup_summary", "vocabulary_record", "critical_lr_relation", "has_final_values", "threshold_label", "format_summary", "unconverged_advice", "lambda_0_note",
           "RADAM_KIND", "RADAM_LR_SCALED_KIND", "RADAM_KINDS", "STEP_KIND_COLUMN"]

#: ``eval.sharpness_kind: auto``'s kind for RAdam whose groups step at one lr: ``hessian`` while its
#: next update is un-rectified, then ``preconditioned`` (:func:`catapult.engine.sharpness_rule.step_kind`);
#: the rows measured say which (:data:`STEP_KIND_COLUMN`). Here, with the records that name it, so that
#: reading a store or a ``metrics.csv`` does not import torch.
RADAM_KIND = "hessian_then_preconditioned"

#: ``auto``'s kind for RAdam whose groups' lrs differ (muP with ``base_width``, SμPar): its un-rectified
#: update is EMA-momentum SGD at each group's lr, bounded by the ``lr_scaled`` sharpness
#: ``M^1/2 H M^1/2`` (:func:`catapult.optim.thresholds.unpreconditioned_kind`), then ``preconditioned``.
RADAM_LR_SCALED_KIND = "lr_scaled_then_preconditioned"

#: Each RAdam kind's un-rectified kind (the rectified one is ``preconditioned``).
RADAM_KINDS = {RADAM_KIND: "hessian", RADAM_LR_SCALED_KIND: "lr_scaled"}

#: The metrics column naming the kind a row's sharpness (and threshold) is, in runs whose kind
#: changes during the run (:data:`RADAM_KINDS`).
STEP_KIND_COLUMN = "sharpness_kind"

#: The metrics column marking each row's top-k solve (``eig_1 .. eig_k``, ``eval.spectrum_top_k``):
#: 1 where it converged to ``eval.sharpness_tol`` (every pair), 0 where it stopped short (the values
#: are logged all the same, approximate); empty on rows without one. The run's
#: ``spectrum_unconverged`` counts its 0s.
EIG_CONVERGED_COLUMN = "eig_converged"

#: The metrics column marking each row's sharpness solve (the ``sharpness`` column: of the Hessian,
#: or of the operator ``sharpness_kind`` names; one solve per row): 1 where it converged to
#: ``eval.sharpness_tol``, 0 where it stopped short (its value logged all the same, approximate);
#: empty on rows without one. The run's ``sharpness_unconverged`` counts its 0s, and the lambda_0
#: solves that gave no row's sharpness (batches after the first; a row 0 of another kind).
SHARPNESS_CONVERGED_COLUMN = "sharpness_converged"

#: values are ``None`` (empty cells in the CSV).
METRIC_COLUMNS = (
    "step",
    "lr",
    "threshold",
    "train_loss",
    "train_accuracy",
    "sharpness",
    "sharpness_matvecs",
    "test_loss",
    "test_accuracy",
)
_INT_COLUMNS = {"step", "sharpness_matvecs", EIG_CONVERGED_COLUMN, SHARPNESS_CONVERGED_COLUMN}


def metric_columns(config: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The ``metrics.csv`` header of a run: :data:`METRIC_COLUMNS`, then the spectrum it logs on
    its sharpness cadence (``eig_1 .. eig_k`` for ``eval.spectrum_top_k = k``, ``hessian_trace``
    for ``eval.trace_matvecs > 0``), then ``sharpness_kind`` (``hessian`` / ``preconditioned``
    per measured row) where the kind changes during the run (RAdam with ``auto`` measuring sharpness),
    then, with ``eig_1 .. eig_k``, ``eig_converged`` (1 / 0 per top-k solve:
    :data:`EIG_CONVERGED_COLUMN`), then, where it measures sharpness (``eval.sharpness_every > 0``),
    ``sharpness_converged`` (1 / 0 per sharpness solve: :data:`SHARPNESS_CONVERGED_COLUMN`); these
    marks are last so that the columns before them keep their places.

    >>> metric_columns({"eval": {"spectrum_top_k": 2, "trace_matvecs": 10}})[-4:]
    ('eig_1', 'eig_2', 'hessian_trace', 'eig_converged')
    >>> metric_columns({"optimizer": {"name": "radam"}, "eval": {"sharpness_kind": "auto", "sharpness_every": 5}})[-2:]
    ('sharpness_kind', 'sharpness_converged')
    >>> metric_columns() == METRIC_COLUMNS
    True
    """
    ev = (config or {}).get("eval", {})
    extra = [f"eig_{i + 1}" for i in range(int(ev.get("spectrum_top_k") or 0))]
    if int(ev.get("trace_matvecs") or 0) > 0:
        extra.append("hessian_trace")
    if ((config or {}).get("optimizer", {}).get("name") == "radam" and ev.get("sharpness_kind") == "auto"
            and int(ev.get("sharpness_every") or 0) > 0):
        extra.append(STEP_KIND_COLUMN)
    if int(ev.get("spectrum_top_k") or 0) > 0:
        extra.append(EIG_CONVERGED_COLUMN)
    if int(ev.get("sharpness_every") or 0) > 0:
        extra.append(SHARPNESS_CONVERGED_COLUMN)
    return METRIC_COLUMNS + tuple(extra)


def is_spectrum_column(key: str) -> bool:
    """Whether ``key`` is one of the spectrum columns of :func:`metric_columns` (``eig_<i>``,
    ``hessian_trace``).

    >>> [is_spectrum_column(k) for k in ("eig_3", "hessian_trace", "eig_0", "eig_x", "sharpness")]
    [True, True, False, False, False]
    """
    return re.fullmatch(r"eig_[1-9][0-9]*|hessian_trace", key) is not None


def spectrum_setting(key: str) -> str:
    """The config setting under which :func:`metric_columns` logs the spectrum column ``key``.

    >>> spectrum_setting("eig_3"), spectrum_setting("hessian_trace")
    ('eval.spectrum_top_k >= 3', 'eval.trace_matvecs > 0')
    """
    if not is_spectrum_column(key):
        raise ValueError(f"{key!r} is not a spectrum column (eig_<i>, hessian_trace)")
    return "eval.trace_matvecs > 0" if key == "hessian_trace" else f"eval.spectrum_top_k >= {key[4:]}"


def write_metrics(rows: Iterable[Mapping[str, Any]], path: str | Path,
                  columns: Sequence[str] = METRIC_COLUMNS) -> None:
    """Write rows as CSV with header ``columns`` (:func:`metric_columns`); ``None`` -> empty cell."""
    with open(path, "w", newline="") as fh:
        fh.write(csv_text(columns, ([row.get(c) for c in columns] for row in rows)))


def read_metrics(path: str | Path) -> list[dict]:
    """Read a ``metrics.csv`` back: ints for ``step``/``sharpness_matvecs``/``eig_converged``/``sharpness_converged``, text for
    ``sharpness_kind``, floats otherwise, ``None`` for empty cells (``pandas.read_csv`` reads
    the same file directly, with NaN)."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, text in raw.items():
                if text == "" or text is None:
                    row[key] = None
                elif key in _INT_COLUMNS:
                    row[key] = int(text)
                elif key == STEP_KIND_COLUMN:
                    row[key] = text
                else:
                    row[key] = float(text)
            rows.append(row)
    return rows


#: ``metrics.csv`` is flushed to the OS at most this often (seconds), on the first row and at close:
#: a killed run keeps every row up to its last flush, i.e. all but at most ~this many seconds of rows.
METRICS_FLUSH_SECONDS = 1.0


class MetricsFile:
    """Streams rows to ``metrics.csv`` as they are logged. Rows are buffered and flushed on the
    first row, then whenever :data:`METRICS_FLUSH_SECONDS` have passed since the last flush, and
    at :meth:`close` (a flush per step costs a system call per step for nothing a reader needs;
    a killed run keeps its rows up to the last flush).

    A row is formatted when it is flushed, not when it is written: :meth:`write` keeps the row
    (read it then; do not change it after writing it). Formatting a row's nine cells inside a
    training step cost ~35 µs of CPU there, cold (RESULTS, "Engine overhead"); at a flush, once
    a second, the rows are formatted in one hot loop. ``before_flush`` (optional) is called
    before each flush (the loop's :class:`~catapult.engine.step_accuracy.StepAccuracies` fills
    the accuracies its rows wait for)."""

    def __init__(self, path: Path, columns: Sequence[str] = METRIC_COLUMNS,
                 flush_seconds: float = METRICS_FLUSH_SECONDS, before_flush: Callable[[], None] | None = None):
        # before the file opens: flush_seconds=nan never flushed by time (a killed run lost every row), and
        # True was 1 s
        self.flush_seconds = check_real("MetricsFile", "flush_seconds", flush_seconds, low=0.0)
        self.path = Path(path)
        self.columns = tuple(columns)
        self.fh = open(path, "w", newline="")
        self.writer = csv.writer(self.fh)
        try:
            with write_errors_named(self.path):
                self.writer.writerow(self.columns)
                self.fh.flush()  # the header: the file reads as a run's records from the start
        except OSError:
            try:
                self.fh.close()
            except OSError:  # what could not be flushed still cannot: the error above says so
                pass
            raise
        self._flushed_at = -math.inf  # the first row goes out at once
        self._rows: list[Mapping[str, Any]] = []  # written, not yet flushed
        self.before_flush = before_flush

    def write(self, row: Mapping[str, Any]) -> None:
        """Add ``row``; flush when the cadence says so."""
        self._rows.append(row)
        now = time.monotonic()
        if now - self._flushed_at >= self.flush_seconds:
            self.flush()
            self._flushed_at = now

    def flush(self) -> None:
        """Format the rows written since the last flush and hand them to the OS."""
        if self.before_flush is not None and self._rows:
            self.before_flush()
        rows, self._rows = self._rows, []
        columns = self.columns
        with write_errors_named(self.path):
            self.writer.writerows([csv_cell(row.get(c)) for c in columns] for row in rows)
            self.fh.flush()

    def close(self) -> None:
        """Flush what is left and close the file (closed even where the flush fails)."""
        try:
            self.flush()
        finally:
            with write_errors_named(self.path):
                self.fh.close()


def json_safe(value: Any) -> Any:
    """``value`` ready for strict JSON: every non-finite float (NaN, inf) becomes ``None``, in
    nested dicts, lists and tuples too (tuples become lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value




def finite(x: float | None) -> bool:
    """``x`` is a number and finite (``None`` is not)."""
    return x is not None and math.isfinite(x)


def has_final_values(status: str | None) -> bool:
    """A run (or sweep cell) of this status ran to its end, so its final values (loss, accuracy,
    sharpness) are a result: ``finished``, and ``collapsed`` (its output constant across inputs,
    yet trained to the end: a store keeps such a cell ``finished`` with its final sharpness).
    ``diverged`` (final values undefined), ``failed`` and the unfinished statuses are not.
    Every table and figure that shows final values asks this, not ``status == "finished"``.

    >>> [s for s in ("finished", "collapsed", "diverged", "failed", "running", None) if has_final_values(s)]
    ['finished', 'collapsed']
    """
    return status in ("finished", "collapsed")


def vocabulary_record(model: Any) -> dict:
    """``{"vocab_size": V}`` for a summary, ``V`` the vocabulary ``model`` was built with (a GPT's
    ``vocab_size``), else ``{}``. A BPE of a small corpus stops short of the requested
    ``data.vocab_size``, which the run's ``config.yaml`` keeps (it names the tokenizer's cache).

    >>> from catapult.models import GPT
    >>> vocabulary_record(GPT(278, d_model=8, n_layers=1, n_heads=2, context=4)), vocabulary_record(object())
    ({'vocab_size': 278}, {})
    """
    vocab = getattr(model, "vocab_size", None)
    return {"vocab_size": vocab} if isinstance(vocab, int) and not isinstance(vocab, bool) else {}


def warmup_summary(config, metrics, lr_trgt: float, warmup_rule) -> dict:
    """Warmup scalars: ``warmup`` (the rule), ``lr_target_reached_at`` (first step whose update used
    ``lr_trgt``, to 1e-9 relative: the last row, the final one after the last update or the one a run
    diverged at, took no step, so its lr is never it; None if never), ``lr_critical`` / ``_lower`` / ``_upper``
    (catapult: the step-0 search; persistent: the first search), ``search_forward_passes``
    (forward passes of all searches and loss probes; 0 for linear) and ``searches``."""
    # (the final row's lr, the schedule's at t = steps, read as reached: a 30-step linear warmup over
    # 31 steps "reached lr_trgt at step 30", whose updates 0..29 all ran below it)
    reached = next((r["step"] for r in metrics[:-1] if r["lr"] is not None and r["lr"] >= lr_trgt * (1 - 1e-9)),
                   None)
    out = dict(warmup=config["schedule"]["warmup"], lr_target_reached_at=reached, lr_critical=None,
               lr_critical_lower=None, lr_critical_upper=None, search_forward_passes=0, searches=0)
    out.update(warmup_rule.info)
    if warmup_rule.info:
        out["searches"] = 1
    pcw = warmup_rule.persistent
    if pcw is not None:
        out["searches"] = pcw.searches
        out["search_forward_passes"] = pcw.forward_passes
        if pcw.history:
            first = pcw.history[0]
            out.update(lr_critical=first["upper"], lr_critical_lower=first["lower"],
                       lr_critical_upper=first["upper"])
    return out


def threshold_label(config: Mapping[str, Any], sharpness_kind: str) -> str:
    """How the instability threshold of the config's optimizer reads in a figure legend: the rule
    :func:`catapult.engine.sharpness_rule.threshold` draws, with ``optimizer.weight_decay`` what it
    lowers that threshold by (:func:`catapult.optim.thresholds.weight_decay_shift`: SGD's coupled L2
    ``wd``; AdamW's and GI-Adam's decoupled decay ``(1 + b1) / (1 - b1) wd``; nothing for Adam's
    coupled L2, which the pre-conditioned operator holds, whatever the kind). RAdam's threshold
    switches at rectification whatever the kind: ``wd`` off the un-rectified (momentum-SGD) rule,
    none off the rectified one, whose pre-conditioned operator holds the L2.

    >>> from catapult.config import validate
    >>> threshold_label(validate({"optimizer": {"name": "sgd", "weight_decay": 0.5}}), "hessian")
    '2/lr_t - wd (wd = 0.5)'
    >>> threshold_label(validate({"optimizer": {"name": "adam", "weight_decay": 0.5}}), "hessian")
    '(2+2b1)/((1-b1) lr_t), the Adam rule (for the pre-conditioned sharpness)'
    >>> threshold_label(validate({"optimizer": {"name": "radam", "weight_decay": 0.5}}), RADAM_KIND)
    'RAdam: (2+2b1)/((1-b1) lr_t) - wd (Hessian) until rectified, then (2+2b1)/((1-b1) r_t lr_t) (pre-conditioned) (wd = 0.5)'
    """
    o = config["optimizer"]
    wd = float(o.get("weight_decay", 0.0))
    if o["name"] == "radam":
        operator = {RADAM_KIND: " (Hessian)", RADAM_LR_SCALED_KIND: " (lr-scaled, the first group's lr_t)"}
        return (f"RAdam: (2+2b1)/((1-b1) lr_t){' - wd' if wd else ''}{operator.get(sharpness_kind, '')} until "
                f"rectified, then (2+2b1)/((1-b1) r_t lr_t){' (pre-conditioned)' if sharpness_kind in operator else ''}"
                + (f" (wd = {wd:.3g})" if wd else ""))
    if not wd or o["name"] == "adam":
        return _undecayed_label(config, sharpness_kind)  # Adam's coupled L2 is in P^-1 (H + wd I)
    if o["name"] in ("adamw", "gi-adam"):
        b1 = float(o["betas"][0])
        return f"{_undecayed_label(config, sharpness_kind)} - {(1 + b1) / (1 - b1):.3g} wd (wd = {wd:.3g})"
    return f"{_undecayed_label(config, sharpness_kind)} - wd (wd = {wd:.3g})"


def _undecayed_label(config: Mapping[str, Any], sharpness_kind: str) -> str:
    if sharpness_kind == "preconditioned":
        b1 = float(config["optimizer"]["betas"][0])
        return f"(2+2b1)/((1-b1) lr_t) = {(2 + 2 * b1) / (1 - b1):.3g}/lr_t"
    if sharpness_kind == "lr_scaled":
        return "2/lr_t of the first group (lr-scaled sharpness)" + (
            "" if config["optimizer"]["momentum"] == 0 else ", (2+2b)/lr_t with momentum")
    if config["optimizer"]["name"] != "sgd":  # Adam-family rule, drawn beside the Hessian's sharpness
        return "(2+2b1)/((1-b1) lr_t), the Adam rule (for the pre-conditioned sharpness)"
    if config["optimizer"]["name"] == "sgd" and config["optimizer"]["momentum"] > 0:
        return "(2+2b)/lr_t"
    return "2/lr_t"


def summarize(config, metrics, *, status, diverged_at, lambda_0, lr_trgt, threshold_target, n_params, device,
               sharpness_kind,
               matvecs_total, measurements, unconverged, wall_time, collapsed: bool = False,
              lambda0_batches: int | None = None, failure: str | None = None,
              spectrum_unconverged: int = 0, unconverged_below_budget: int = 0,
              lambda_0_converged: bool | None = None) -> dict:
    """The run's scalars (``summary.json``). Non-finite numbers become ``null`` in the file.

    ``status`` is the loop's (``finished``/``diverged``); the summary's is
    :func:`~catapult.engine.step.final_status` of it (the paper's accuracy rule, ``collapsed``),
    with ``failure`` saying which rule failed the run (``None`` if none did; a loop that ended
    ``diverged`` may pass its own, e.g. ``"non_finite_weights"``, else it is read from the last
    row's training loss). A diverged run has
    no final test loss, test accuracy or sharpness (``None``, as in the sweep store): its last
    evaluation came before it blew up and would flatter it; its best and peak values stay. Nor a
    final training accuracy where its last loss is not finite (the outputs it would count are not).
    ``unconverged`` counts the sharpness solves that did not reach ``eval.sharpness_tol``
    (``sharpness_unconverged``), ``spectrum_unconverged`` the top-k solves of the ``eig_i``
    columns that did not (``eval.spectrum_top_k``; 0 where none was taken), and
    ``unconverged_below_budget`` those of both that stopped below their product budget
    (``eval.sharpness_max_iter``; a top-k solve's at least ``3 k``): there the products' own error
    (finite differences) or rounding is above the tol, and more products would not help
    (:func:`unconverged_advice`).

    Each of ``catapults`` carries ``sharpness_converged``: whether the solves of its
    ``sharpness_before`` and ``sharpness_after`` (the catapult's verdict) both converged.
    ``final_sharpness_converged`` and ``peak_sharpness_converged`` are the marks
    (:data:`SHARPNESS_CONVERGED_COLUMN`) of the rows ``final_sharpness`` and ``peak_sharpness``
    were read from (``None`` where there is no such value, or its row has no mark), and
    ``lambda_0_converged`` whether every solve lambda_0 averages converged (``None`` where
    lambda_0 was not measured): a learning rate ``c/lambda0`` inherits its error
    (:func:`lambda_0_note`).
    """
    losses = [r["train_loss"] for r in metrics if finite(r["train_loss"])]
    sharp = [(r["step"], r["sharpness"]) for r in metrics if r["sharpness"] is not None]
    # each sharpness value's row, for its solve's mark (None: a row without one)
    marked = [r for r in metrics if r["sharpness"] is not None]
    tests = [r for r in metrics if r["test_loss"] is not None]
    last = metrics[-1] if metrics else {}
    from catapult.engine.step import failure_of, final_status  # step imports this module's columns

    events = detect_catapults(metrics)
    if diverged_at is not None:  # a spike the run diverged in never came back, whatever ended it
        events = [e for e in events if e.end is not None]  # (a nan loss: detect_catapults drops it)
    if status == "diverged" and failure is not None:
        pass
    elif status == "diverged" and last.get("train_loss") is not None:
        failure = failure_of(last["train_loss"])
    else:
        status, failure = final_status(status, last.get("train_accuracy"), config, collapsed)
    finite_tests = [r for r in tests if finite(r["test_loss"])]
    final_tests, final_sharp = ([], []) if status == "diverged" else (tests, sharp)
    return {
        "name": config["name"],
        "status": status,
        "failure": failure,
        "collapsed": bool(collapsed),
        "diverged_at": diverged_at,
        "steps": config["train"]["steps"],
        "steps_completed": (diverged_at if diverged_at is not None else config["train"]["steps"]),
        "lr": config["optimizer"]["lr"],
        "lr_target": lr_trgt,
        "lambda_0": lambda_0,
        "lr_target_times_lambda_0": lr_trgt * lambda_0 if lambda_0 else None,
        "threshold_target": threshold_target,
        "initial_train_loss": losses[0] if losses else None,
        "final_train_loss": last.get("train_loss"),
        "peak_train_loss": max(losses) if losses else None,
        "min_train_loss": min(losses) if losses else None,
        # taken from the outputs a non-finite loss came from (argmax of nan: class 0) it was a number
        "final_train_accuracy": last.get("train_accuracy") if finite(last.get("train_loss")) else None,
        "final_test_loss": final_tests[-1]["test_loss"] if final_tests else None,
        "final_test_accuracy": final_tests[-1]["test_accuracy"] if final_tests else None,
        # over finite values: max() with a nan first returned nan, and skipped one anywhere else
        "best_test_accuracy": max(accuracies) if (accuracies := [r["test_accuracy"] for r in tests
                                                                  if finite(r["test_accuracy"])]) else None,
        "best_test_loss": min(r["test_loss"] for r in finite_tests) if finite_tests else None,
        "lambda0_batches": lambda0_batches,
        "sharpness_kind": sharpness_kind,
        "final_sharpness": final_sharp[-1][1] if final_sharp else None,
        "final_sharpness_converged": _mark(marked[-1]) if final_sharp else None,
        "peak_sharpness": max(peaks) if (peaks := [v for _, v in sharp if finite(v)]) else None,
        # the first row that reached the peak (max() takes the first of equal values too)
        "peak_sharpness_converged": (_mark(next(r for r in marked if r["sharpness"] == max(peaks)))
                                     if peaks else None),
        "lambda_0_converged": None if lambda_0_converged is None else bool(lambda_0_converged),
        "catapult": bool(events),
        "catapults": [{**e.as_dict(), "sharpness_converged": _catapult_mark(e, marked)} for e in events],
        "sharpness_measurements": measurements,
        "sharpness_matvecs": matvecs_total,
        "sharpness_unconverged": unconverged,
        "spectrum_unconverged": spectrum_unconverged,
        "unconverged_below_budget": unconverged_below_budget,
        "num_params": n_params,
        "device": str(device),
        "dtype": config["dtype"],
        "wall_time_s": wall_time,
    }


def _catapult_mark(event, marked: Sequence[Mapping[str, Any]]) -> bool | None:
    """Whether the solves of a catapult's ``sharpness_before`` (the last row up to its start with
    that value) and ``sharpness_after`` (the first after its peak) both converged: False where
    either did not, None where a row has no mark."""
    before = next((r for r in reversed(marked) if r["step"] <= event.start and r["sharpness"] == event.sharpness_before), None)
    after = next((r for r in marked if r["step"] > event.peak and r["sharpness"] == event.sharpness_after), None)
    marks = [None if r is None else _mark(r) for r in (before, after)]
    return False if False in marks else (None if None in marks else True)


def _mark(row: Mapping[str, Any]) -> bool | None:
    """A sharpness row's mark as a bool (``None``: the row has none, e.g. rows of an older file)."""
    mark = row.get(SHARPNESS_CONVERGED_COLUMN)
    return None if mark is None else bool(mark)


#: What to do about solves that stopped below their product budget short of ``eval.sharpness_tol``.
PRECISION_ADVICE = ("the products' own error (finite differences) or rounding is above eval.sharpness_tol, and "
                    "more products do not help: loosen eval.sharpness_tol, or take the products in float64 "
                    "(eval.sharpness_dtype=float64)")


def unconverged_advice(summary: Mapping[str, Any]) -> str:
    """What to do about a run's unconverged solves (``sharpness_unconverged`` +
    ``spectrum_unconverged``): raise ``eval.sharpness_max_iter`` for those that used all of it; for
    those that stopped below it (``unconverged_below_budget``: a float32 solve at a tol under its
    rounding, or finite-difference products whose own error is above the tol), a looser tol or
    float64. A summary written before the count gives both.

    >>> unconverged_advice({"sharpness_unconverged": 2, "spectrum_unconverged": 0, "unconverged_below_budget": 0})
    'raise eval.sharpness_max_iter'
    >>> unconverged_advice({"sharpness_unconverged": 2, "spectrum_unconverged": 1, "unconverged_below_budget": 1})[:70]
    '2 used all of eval.sharpness_max_iter: raise it; 1 stopped below it: t'

    Where lambda_0 is one of them and the lr ``c/lambda0`` came from it, it names it (:func:`lambda_0_note`).
    """
    return _remedy(summary) + (f"; {note}" if (note := lambda_0_note(summary)) else "")


def _remedy(summary: Mapping[str, Any]) -> str:
    total = int(summary.get("sharpness_unconverged") or 0) + int(summary.get("spectrum_unconverged") or 0)
    short = summary.get("unconverged_below_budget")
    if short is None:
        return f"raise eval.sharpness_max_iter where they used all of it; where they stopped below it, {PRECISION_ADVICE}"
    if not short:
        return "raise eval.sharpness_max_iter"
    if short >= total:
        return f"they stopped below eval.sharpness_max_iter: {PRECISION_ADVICE}"
    return (f"{total - short} used all of eval.sharpness_max_iter: raise it; {short} stopped below it: "
            f"{PRECISION_ADVICE}")


def lambda_0_note(summary: Mapping[str, Any]) -> str:
    """What a run's ``lambda_0_converged`` says of its learning rate: where it is False and the lr is
    ``c/lambda0``, that lambda_0 came from a solve that stopped short of ``eval.sharpness_tol`` and
    ``lr_trgt`` carries its error; ``""`` otherwise (converged, not measured, a summary written before
    the mark, or an absolute lr, which lambda_0 does not touch: its value is marked all the same).

    >>> lambda_0_note({"lambda_0_converged": False, "lr": "2^3/lambda0"})
    "lambda_0 is from a solve that did not converge: lr '2^3/lambda0' (lr_trgt) carries its error"
    >>> lambda_0_note({"lambda_0_converged": False, "lr": 0.1}), lambda_0_note({})
    ('', '')
    """
    lr = summary.get("lr")
    if summary.get("lambda_0_converged") is not False or not (isinstance(lr, str) and "lambda0" in lr):
        return ""
    return f"lambda_0 is from a solve that did not converge: lr {lr!r} (lr_trgt) carries its error"


def _short(mark: bool | None) -> str:
    """The mark a value from an unconverged solve carries in :func:`format_summary`."""
    return " (not converged)" if mark is False else ""


def critical_lr_relation(lower: float, upper: float) -> str:
    """How a critical-lr search's ``lr_c`` stands to the critical lr, read from its bracket ``[lower,
    upper]`` (:class:`catapult.CriticalLR`): ``"="`` for a measured one (``0 < lower < upper < inf``, or
    a zero step's ``lower = upper = inf``); ``">="`` where the loss never rose (``lower == upper``: it
    still fell at ``lr_max``; ``upper = inf``: 64 doublings without ``lr_max``, ``lr_c = lower``);
    ``"<="`` where it rose at the search's first trial (``lower == 0``). The one rule of the run
    summary, ``catapult critical-lr`` and the bench tables.

    Example:
        >>> critical_lr_relation(0.25, 0.5), critical_lr_relation(0.01, 0.01), critical_lr_relation(0.0, 300.0)
        ('=', '>=', '<=')
        >>> critical_lr_relation(2.0 ** 50, math.inf), critical_lr_relation(math.inf, math.inf)
        ('>=', '=')
    """
    if lower == 0.0:
        return "<="
    if lower < upper < math.inf or lower == upper == math.inf:
        return "="
    return ">="


def _critical_lr_text(summary: Mapping[str, Any], fmt) -> str:
    """The summary's ``lr_critical`` as the search found it (:func:`critical_lr_relation`): a search
    capped at lr_trgt whose loss still fell there bounds the critical lr from below, one whose loss
    rose at its first trial from above; either printed as the bare number read as a measured lr_c
    (``lr_c 29.63`` for a search that never saw the loss rise)."""
    lr, lower, upper = (summary.get(key) for key in ("lr_critical", "lr_critical_lower", "lr_critical_upper"))
    if lr is None or lower is None or upper is None:
        return fmt(lr)
    relation = critical_lr_relation(lower, upper)
    if relation == ">=":
        return f">= {fmt(lr)} (no rise up to lr_trgt)"
    if relation == "<=":
        return f"<= {fmt(lr)} (the loss rose at the search's first lr)"
    return fmt(lr)


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few human-readable lines about a run; values from solves that did not converge say so."""

    def fmt(x, spec=".4g"):
        return "-" if x is None else format(x, spec)

    lines = [
        f"{summary['name']}: {summary['status']}"
        + (f" at step {summary['diverged_at']}" if summary["diverged_at"] is not None else "")
        + (f" ({summary['failure']})" if summary.get("failure") else "")
        + f" after {counted(summary['steps_completed'], 'step')} ({summary['wall_time_s']:.1f} s)",
        f"  lambda_0 {fmt(summary['lambda_0'])}{_short(summary.get('lambda_0_converged'))}  lr_trgt {fmt(summary['lr_target'])}"
        f"  (lr_trgt * lambda_0 = {fmt(summary['lr_target_times_lambda_0'], '.3g')})",
        f"  train loss: initial {fmt(summary['initial_train_loss'])}  peak {fmt(summary['peak_train_loss'])}"
        f"  final {fmt(summary['final_train_loss'])}",
        f"  test: loss {fmt(summary['final_test_loss'])}  accuracy {fmt(summary['final_test_accuracy'], '.4f')}"
        f"  (best: loss {fmt(summary.get('best_test_loss'))}  accuracy {fmt(summary['best_test_accuracy'], '.4f')})"
        if summary["best_test_accuracy"] is not None else "  test: none evaluated (no test set, or no evaluation step)",
    ]
    if summary.get("warmup") in ("catapult", "persistent"):
        lines.append(f"  {summary['warmup']} warmup: lr_c {_critical_lr_text(summary, fmt)}  lr_trgt reached at step "
                     f"{fmt(summary['lr_target_reached_at'], 'd')}  searches {summary['searches']} "
                     f"({summary['search_forward_passes']} forward passes)")
    if summary["sharpness_measurements"]:
        lines.append(f"  sharpness: final {fmt(summary['final_sharpness'])}{_short(summary.get('final_sharpness_converged'))}"
                     f"  peak {fmt(summary.get('peak_sharpness'))}{_short(summary.get('peak_sharpness_converged'))}"
                     "  threshold at lr_trgt "
                     f"{fmt(summary['threshold_target'])}  catapult: {'yes' if summary['catapult'] else 'no'}")
    # solves that stopped short of eval.sharpness_tol: their values are logged (a top-k solve's rows
    # marked eig_converged 0; a summary written before spectrum_unconverged existed has no such key)
    short = [f"{n} {what}" for key, what in (("sharpness_unconverged", "sharpness"), ("spectrum_unconverged", "top-k (eig_i)"))
             if (n := summary.get(key))]
    if short:
        lines.append(f"  NOT converged to eval.sharpness_tol: {', '.join(short)} solve(s); their values are "
                     f"approximate ({unconverged_advice(summary)})")
    return "\n".join(lines)
