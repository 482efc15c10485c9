"""Run a test's function on several gloo ranks over loopback, each in a spawned process.

``on_ranks(body, *args)`` is ``[body(0, world, *args), body(1, world, *args), ...]``, each call on
its own rank of one process group. The set-up and teardown are written once here, because they
are where multi-process tests go flaky:

- ``spawn``, never ``fork``: a fork after torch started its threads can deadlock;
- a timeout on the group, so a rank left waiting in a collective fails the test, not hangs it;
- a barrier before ``destroy_process_group``, so no rank tears down while another is in flight,
  and the group's object freed only at the next body (torch 2.2.2's gloo teardown deadlock, ``_run_one``);
- ``os._exit(0)`` once the result is on disk and the group is gone. A rank has ended with
  ``terminate called without an active exception`` (SIGABRT) in full-suite runs, twice, in two
  tests, and never in 167 loaded reruns of one: a native thread met at interpreter teardown is
  the likely cause. A test's worker has nothing left to clean up, so it skips that teardown;
- ``faulthandler`` on, so a native crash inside the body still prints each thread's Python stack.

The ranks are a pool: spawned once per test process (each pays ``import torch`` and catapult,
~2-3 s on a loaded core) and given one body after another. Each body still gets a process group
of its own (a new port, its own timeout: ``init_process_group`` before it, barrier and
``destroy_process_group`` after it), and what a body can leak in its process is put back before
the next one: the default dtype, the RNG states (torch's, NumPy's, Python's), the
deterministic-algorithm, grad and anomaly modes, the float32 matmul precision, the thread count,
the environment variables, the working directory and the warning filters. Any failure (a body
raising on any rank, a rank dying, a barrier or teardown failing) ends the whole pool; the next
call spawns a new one. ``on_ranks(..., fresh=True)`` runs a body on ranks spawned for it alone,
for a test that needs processes nothing ran in before. Each rank's output during a body goes to a
file that is echoed to this process's stdout/stderr (pytest's capture shows it on a failure).
"""
from __future__ import annotations

import atexit
import datetime
import faulthandler
import os
import random
import socket
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """What a body can change in its process, as it was when the rank started."""

    def __init__(self):
        self.dtype = torch.get_default_dtype()
        self.torch_rng = torch.get_rng_state()
        self.numpy_rng = np.random.get_state()
        self.python_rng = random.getstate()
        self.deterministic = (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled())
        self.precision = torch.get_float32_matmul_precision()
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.filters = list(warnings.filters)

    def put_back(self):
        torch.set_default_dtype(self.dtype)
        torch.set_rng_state(self.torch_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)
        torch.use_deterministic_algorithms(self.deterministic[0], warn_only=self.deterministic[1])
        torch.set_float32_matmul_precision(self.precision)
        torch.set_grad_enabled(True)
        torch.autograd.set_detect_anomaly(False)
        torch.set_num_threads(1)  # the ranks share the cores
        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        warnings.filters[:] = self.filters
        warnings._filters_mutated()


#: How long the ranks of a body wait for each other to join its group (seconds).
RENDEZVOUS_S = 600.0

#: The last body's process group, kept from ``destroy_process_group`` until the next body starts.
_RETIRED: list = []


def _run_one(rank, world, port, out_dir, timeout_s, body, args):
    """One body on a new process group; its result on disk. Raises what the body raises.

    The group is freed at the next body, not by ``destroy_process_group``: torch 2.2.2's gloo
    destructor joins its worker threads holding the GIL, and a worker still freeing a finished
    collective whose tensor Python had dropped waits for the GIL (a rank of
    ``test_two_gloo_ranks_equal_one_process_on_the_union`` hung there, barrier or not). By the
    next body the workers are idle: this process waited for the job without the GIL."""
    import torch.distributed as dist

    _RETIRED.clear()
    # the ranks meet with a wait of their own: a rank still importing torch on a loaded host (a
    # second one took over 120 s at load ~21) is not a rank left waiting in a collective, which
    # the group's timeout_s is for
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0,
                          timeout=datetime.timedelta(seconds=max(timeout_s, RENDEZVOUS_S)))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        torch.save(body(rank, world, *args), os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        _RETIRED.append(dist.group.WORLD)
        dist.destroy_process_group()


def _to_log(path):
    """Points fd 1 and 2 (faulthandler's too) at ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _pool_rank_main(rank, world, conn):
    """A pooled rank: ``(port, out_dir, timeout_s, body, args)`` from ``conn`` one after another,
    answering ``("ok", None)`` or ``("error", traceback)``; ``None`` (or the parent gone) ends it."""
    faulthandler.enable()
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    start = _Process()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            job = None
        if job is None:
            break
        port, out_dir, timeout_s, body, args = job
        _to_log(os.path.join(out_dir, f"rank{rank}.log"))
        start.put_back()
        try:
            _run_one(rank, world, port, out_dir, timeout_s, body, args)
            answer = ("ok", None)
        except BaseException:  # noqa: BLE001 - reported to the test, which fails
            answer = ("error", traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(answer)
        if answer[0] == "error":
            break  # the parent ends the pool; nothing here is trusted again
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class RanksFailed(RuntimeError):
    """A body raised, or a rank died, on the ranks of ``on_ranks``."""


class _Pool:
    def __init__(self, world):
        ctx = mp.get_context("spawn")
        self.world = world
        self.conns, self.procs = [], []
        for rank in range(world):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_pool_rank_main, args=(rank, world, child), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, body, args, timeout_s):
        with tempfile.TemporaryDirectory() as out_dir:
            try:
                port = free_port()
                for conn in self.conns:
                    conn.send((port, out_dir, timeout_s, body, args))
                answers = self._answers()
            finally:
                self._echo(out_dir)
            errors = [f"rank {rank}:\n{detail}" for rank, (kind, detail) in enumerate(answers) if kind != "ok"]
            if errors:
                raise RanksFailed("\n".join(errors))
            return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(self.world)]

    def _answer(self, rank, wait):
        """The rank's answer if it has one within ``wait`` seconds; a dead rank's, if it died."""
        conn, proc = self.conns[rank], self.procs[rank]
        try:
            if conn.poll(wait):
                return conn.recv()
        except (EOFError, OSError):
            pass
        else:
            if proc.is_alive():
                return None
        proc.join(1.0)
        return ("error", f"the rank's process died (exit code {proc.exitcode})")

    def _answers(self):
        answers = [None] * self.world
        while any(a is None for a in answers):
            for rank in range(self.world):
                if answers[rank] is None:
                    answers[rank] = self._answer(rank, 0.05)
            if any(a is not None and a[0] != "ok" for a in answers):
                # one rank failed: the others may wait in a collective until the group's timeout
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline and any(a is None for a in answers):
                    for rank in range(self.world):
                        if answers[rank] is None:
                            answers[rank] = self._answer(rank, 0.05)
                return [a or ("error", "(still running when another rank failed)") for a in answers]
        return answers

    def _echo(self, out_dir):
        for rank in range(self.world):
            path = os.path.join(out_dir, f"rank{rank}.log")
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text = f.read()
                if text:
                    sys.stderr.write(f"--- gloo rank {rank} ---\n{text}")

    def close(self, wait=True):
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(5.0 if wait else 0.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for conn in self.conns:
            conn.close()


_pool: _Pool | None = None


def _close_pool():
    global _pool
    if _pool is not None:
        pool, _pool = _pool, None
        pool.close()


atexit.register(_close_pool)


def on_ranks(body, *args, world: int = 2, timeout_s: float = 120.0, fresh: bool = False) -> list:
    """``body(rank, world, *args)`` on each of ``world`` gloo ranks; the results, by rank.
    ``body`` must be a module-level function (it is pickled into the spawned processes) and
    return what ``torch.load(weights_only=True)`` reads back: tensors, numbers, strings, and
    lists, tuples and dicts of them. ``fresh=True``: on ranks spawned for this body alone."""
    global _pool
    if fresh:
        pool = _Pool(world)
        try:
            return pool.run(body, args, timeout_s)
        finally:
            pool.close()
    if _pool is not None and (_pool.world != world or not all(proc.is_alive() for proc in _pool.procs)):
        _close_pool()  # another world size, or a rank gone since its last body (killed, OOM)
    if _pool is None:
        _pool = _Pool(world)
    try:
        return _pool.run(body, args, timeout_s)
    except BaseException:
        _close_pool()
        raise
