"""Worker processes whose jobs stream results back: the pool behind ``ensemble --workers N``.

A job is a module-level generator function and its argument (both picklable); it runs in one
of the pool's spawned processes, and every item it yields is sent to the driver at once, so a
sweep's store fills up while a long job still runs::

    pool = StreamPool(workers=2, threads=1)
    pool.submit("a", my_generator, payload)
    for event in pool.events():      # ("item", key, item) | ("done", key, None)
        ...                          # | ("error", key, text) | ("lost", key, text)
    pool.close()

* ``"error"``: the job raised; ``text`` is the traceback. The worker lives on.
* ``"lost"``: the worker process died mid-job (killed, out of memory, a crash in native code);
  ``text`` says how. A replacement process takes the next job. Whether to submit the job's
  unfinished part again is the caller's choice (``submit`` may be called while iterating).
* Workers die with the driver, also on ``kill -9``: on Linux the kernel sends them ``SIGKILL``
  when the driver's thread that started them ends (``PR_SET_PDEATHSIG``); elsewhere a watchdog
  thread in each worker exits within a second of its parent's death. A finished result that
  has reached the driver is in the store by then; what a worker was computing is redone on resume.
* ``spawn`` start method everywhere: a fork of a process that has run OpenMP threads (torch's
  CPU ops) can hang in the child, and CUDA cannot be forked at all.
"""
from __future__ import annotations

import collections
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from typing import Any, Callable, Iterator

from catapult.arguments import check_integer, max_workers
from catapult.sweep.executors import check_threads, error_text

__all__ = ["StreamPool", "exit_with_parent"]

_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` does (see the module docstring); called first
    in a spawned worker, also by the demo's process pool."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="catapult-parent-watch", daemon=True).start()


def _worker_main(conn, parent_pid: int, threads: int | None) -> None:
    """A worker's loop: run each ``(key, fn, arg)`` received, send its items, until ``None``."""
    exit_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: the driver handles it (and stops the workers)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        key, fn, arg = job
        try:
            for item in fn(arg):
                conn.send(("item", key, item))
        except Exception as err:  # reported to the driver; the worker takes the next job
            conn.send(("error", key, error_text(err)))
        else:
            conn.send(("done", key, None))


class _Worker:
    def __init__(self, ctx, threads: int | None):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, os.getpid(), threads),
                                   name="catapult-worker", daemon=True)
        self.process.start()
        child.close()  # the driver keeps only its own end: EOF when the worker dies
        self.job: Any = None  # key of the job it runs, or None when idle


class StreamPool:
    """``workers`` spawned processes (``threads`` torch threads each, or torch's default) that
    run submitted generator jobs and stream their items back (see the module docstring).
    Processes start on first use; :meth:`close` stops them (also as a context manager)."""

    def __init__(self, workers: int, threads: int | None = None):
        self.size = check_integer("StreamPool", "workers", workers, high=max_workers())
        self.threads = check_threads("StreamPool", threads)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * self.size
        self._queue: collections.deque = collections.deque()

    def submit(self, key: Any, fn: Callable[[Any], Iterator[Any]], arg: Any) -> None:
        """Queue job ``key``: ``fn(arg)`` in a worker (``fn`` a module-level generator function)."""
        self._queue.append((key, fn, arg))

    def _dispatch(self) -> None:
        for i in range(self.size):
            if not self._queue:
                return
            worker = self._workers[i]
            if worker is None or not worker.process.is_alive():
                worker = self._workers[i] = _Worker(self._ctx, self.threads)
            if worker.job is None:
                job = self._queue.popleft()
                try:
                    worker.conn.send(job)
                except OSError:  # it died since the check: the job goes to a new process
                    self._queue.appendleft(job)
                    self._retire(worker)
                    continue
                worker.job = job[0]

    def events(self) -> Iterator[tuple[str, Any, Any]]:
        """Yields ``(kind, key, value)`` events until every submitted job has ended."""
        failed_starts = 0
        while True:
            self._dispatch()
            busy = [w for w in self._workers if w is not None and w.job is not None]
            if not busy:
                if not self._queue:
                    return
                failed_starts += 1  # every process died before taking a job: try fresh ones
                if failed_starts > 3:
                    raise RuntimeError("catapult worker processes die as they start; "
                                       "run with workers=1 to see the error in this process")
                continue
            failed_starts = 0
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    yield from self._drain(worker)

    def _drain(self, worker: _Worker) -> Iterator[tuple[str, Any, Any]]:
        """Events of ``worker`` that are ready; ``"lost"`` if it died with a job unfinished."""
        while worker.job is not None:
            try:
                if not worker.conn.poll():
                    if worker.process.is_alive():
                        return
                    raise EOFError
                kind, key, value = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(timeout=5)
                key, worker.job = worker.job, None
                code = worker.process.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                self._retire(worker)
                yield "lost", key, f"worker process {worker.process.pid} died mid-job ({how})"
                return
            if kind in ("done", "error"):
                worker.job = None
            yield kind, key, value

    def _retire(self, worker: _Worker) -> None:
        worker.conn.close()
        self._workers[self._workers.index(worker)] = None

    def close(self) -> None:
        """Stop every worker: a polite end for idle ones, ``SIGTERM`` for the rest. Idempotent."""
        for worker in self._workers:
            if worker is None:
                continue
            try:
                if worker.job is None and worker.process.is_alive():
                    worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            if worker is None:
                continue
            worker.process.join(timeout=2 if worker.job is None else 0)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = [None] * self.size
        self._queue.clear()

    def __enter__(self) -> "StreamPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
