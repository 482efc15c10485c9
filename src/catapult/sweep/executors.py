"""Executors: where a sweep's cells run.

The interface (what the sweep driver needs from any executor, e.g. the batched ``ensemble``
one in :mod:`catapult.sweep.ensemble`)::

    class MyExecutor(Executor):
        name = "mine"
        def run(self, cells: Iterable[Cell]) -> Iterator[tuple[int, CellResult]]:
            ...  # yield (cell.id, result) for every cell, in any order, as each finishes

* ``cells``: an iterable of :class:`Cell` objects, consumed lazily: taking a cell from it marks
  it ``running`` in the store (so take cells when you start them, or all at once with
  ``list(cells)`` when you must group them first). A cell has ``id`` (int), ``config`` (a
  validated run config whose ``optimizer.lr`` is already an absolute number: the driver
  resolved ``"c/lambda0"`` with the cached lambda_0), ``swept`` (dotted key -> value, for
  display) and ``lambda_0``.
* A result is a :class:`CellResult` or anything with ``status`` (``"finished"``,
  ``"diverged"`` or ``"failed"``), ``metrics`` (per-step dicts, keys
  :data:`catapult.engine.METRIC_COLUMNS`) and ``summary`` (dict, as ``RunResult.summary``);
  optional ``error`` (str, for ``failed``) and ``worker`` (str).
* Every cell must be yielded exactly once. A cell whose run raises is yielded as ``failed``
  with the error; it must not stop the others. A cell that is never yielded (the process was
  killed) stays ``running`` in the store and is redone on resume.
* The driver alone writes the store, one transaction per yielded result, as soon as it is
  yielded: yield results as they finish, not all at the end.
* ``run_fn`` (``run_fn(config, progress="none") -> RunResult-like``) is injectable so tests can
  count or fake runs; it defaults to :func:`catapult.engine.run`.

Executors are looked up by name in :data:`EXECUTORS` (``"module:Class"`` strings, imported on
first use so optional dependencies stay optional).
"""
from __future__ import annotations

import importlib
import os
import socket
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

__all__ = [
    "Cell",
    "CellResult",
    "Executor",
    "LocalExecutor",
    "EXECUTORS",
    "get_executor",
    "run_cell",
    "torch_threads",
    "default_run_fn",
    "to_cell_result",
]


@dataclass
class Cell:
    """One unit of work: ``config`` is runnable as is (absolute ``optimizer.lr``)."""

    id: int
    config: dict
    swept: dict = field(default_factory=dict)
    lambda_0: float | None = None


@dataclass
class CellResult:
    """A cell's outcome, without the trained model (cheap to send between processes)."""

    status: str
    metrics: list[dict]
    summary: dict
    error: str | None = None
    worker: str | None = None


RunFn = Callable[..., Any]


def default_run_fn(config: Mapping[str, Any], progress: Any = "none") -> Any:
    """:func:`catapult.engine.run` without a run directory or per-run progress output."""
    from catapult.engine import run

    return run(config, progress=progress)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def to_cell_result(result: Any, worker: str | None = None) -> CellResult:
    """A :class:`CellResult` from a ``RunResult``-like object (drops the model)."""
    if isinstance(result, CellResult):
        if worker and result.worker is None:
            result.worker = worker
        return result
    return CellResult(
        status=result.status,
        metrics=[dict(row) for row in (result.metrics or [])],
        summary=dict(result.summary or {}),
        error=getattr(result, "error", None),
        worker=worker,
    )


def error_text(err: BaseException, limit: int = 4000) -> str:
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        message = str(err)
    except Exception as inner:   # noqa: BLE001 - an exception whose __str__ raises: the cell still fails alone
        message = f"(its message raised {type(inner).__name__})"
    head = f"{type(err).__name__}: {message}"
    tail = tb[-limit:]
    return f"{head}\n{tail}" if tail else head


@contextmanager
def torch_threads(threads: int | None):
    """Run the body with ``torch.set_num_threads(threads)`` (nothing if ``None``), then restore.

    Small models on a shared CPU run much faster on one thread each; and CPU results are
    bit-for-bit reproducible only at a fixed thread count, so executors that must agree
    (local vs Ray workers, which default to one thread per CPU) take the same ``threads``.
    """
    threads = check_threads("torch_threads", threads)  # int(threads) made 1.5 and True one thread
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_threads(owner: str, threads: Any) -> int | None:
    """An executor's ``threads`` as an int, or None; a ValueError naming ``owner`` unless it is None or an
    integer in ``[1, max_threads()]`` (:func:`~catapult.arguments.max_threads`): ``threads=1.5`` ran on
    ``int(1.5)`` = 1 thread, ``"2"`` on 2, and ``0`` or ``-1`` made every cell (and its lambda_0) fail in
    ``torch.set_num_threads`` after the store was written.

    >>> check_threads("LocalExecutor", 2), check_threads("LocalExecutor", None)
    (2, None)
    >>> check_threads("LocalExecutor", 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: LocalExecutor threads must be None or an integer in [1, ...]; got 0
    """
    from catapult.arguments import check_integer, max_threads

    # threads=10**6 passed and OpenMP failed to create the threads in every cell (a segfault, or
    # libgomp's exit), 2**31 in torch's words, after the store was written
    return check_integer(owner, "threads", threads, high=max_threads(), optional=True)


def run_cell(run_fn: RunFn, cell: Cell, threads: int | None = None) -> CellResult:
    """Run one cell; an exception becomes a ``failed`` result carrying the error text.

    ``KeyboardInterrupt``/``SystemExit`` propagate (the sweep stops; the cell stays ``running``
    and a resume redoes it). ``threads``: see :func:`torch_threads`.
    """
    worker = worker_name()
    try:
        with torch_threads(threads):
            result = run_fn(cell.config, progress="none")
    except Exception as err:  # one cell's failure must not stop the sweep
        return CellResult("failed", [], {}, error=error_text(err), worker=worker)
    out = to_cell_result(result, worker)
    if out.status not in ("finished", "diverged", "failed", "collapsed"):
        return CellResult("failed", out.metrics, out.summary,
                          error=f"run_fn returned status {out.status!r}", worker=worker)
    return out


class Executor:
    """Base class: runs cells and yields ``(cell_id, result)`` as they finish (see module doc)."""

    name = "base"
    #: whether cells run on this machine (in this process or its children), so a model too large
    #: for this machine's memory can be refused before the sweep starts
    runs_here = True
    #: the progress hook: ``progress(text)`` shows a line on the sweep's display (the driver sets
    #: it while cells run; None: nothing is shown). An executor whose first result takes long to
    #: come (Ray: the instance starts, then whole cells run) says there what it started.
    progress: Callable[[str], None] | None = None

    def __init__(self, run_fn: RunFn | None = None):
        self.run_fn = run_fn or default_run_fn

    def describe(self) -> str:
        """What the sweep's start line says runs its cells: the executor and how many cells it
        runs at once.

        >>> Executor().describe()
        'the base executor'
        """
        return f"the {self.name} executor"

    def say(self, text: str) -> None:
        """Show ``text`` through the :attr:`progress` hook, if the driver set one."""
        if self.progress is not None:
            self.progress(text)

    def run(self, cells: Iterable[Cell]) -> Iterator[tuple[int, CellResult]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (processes, clusters). Safe to call twice."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """Cells one after another in this process (``threads``: torch threads while running)."""

    name = "local"

    def __init__(self, run_fn: RunFn | None = None, *, threads: int | None = None):
        super().__init__(run_fn)
        self.threads = check_threads("LocalExecutor", threads)

    def describe(self) -> str:
        """The local executor and its torch threads.

        >>> LocalExecutor(threads=2).describe()
        'the local executor (one cell at a time in this process, 2 torch threads)'
        """
        threads = "torch's default threads" if self.threads is None else f"{self.threads} torch thread" + (
            "s" if self.threads > 1 else "")
        return f"the local executor (one cell at a time in this process, {threads})"

    def run(self, cells: Iterable[Cell]) -> Iterator[tuple[int, CellResult]]:
        for cell in cells:
            yield cell.id, run_cell(self.run_fn, cell, self.threads)


#: executor name -> ``"module:Class"``; the class is ``Class(run_fn=None, **options)``.
EXECUTORS: dict[str, str] = {
    "local": "catapult.sweep.executors:LocalExecutor",
    "ensemble": "catapult.sweep.ensemble:EnsembleExecutor",
    "ray": "catapult.sweep.ray_executor:RayExecutor",
}


def get_executor(name: str, *, run_fn: RunFn | None = None, **options: Any) -> Executor:
    """Build the executor registered under ``name`` with ``run_fn`` and its options.

    Raises ``ValueError`` for an unknown name (listing the known ones) and a clear
    ``ImportError`` when the executor's module (or its optional dependency) is missing.
    """
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; allowed: {', '.join(EXECUTORS)}")
    module_name, _, class_name = EXECUTORS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise ImportError(f"the {name!r} executor is not available in this installation "
                              f"({module_name} is missing)") from None
        raise
    cls = getattr(module, class_name)
    return cls(run_fn=run_fn, **options)
