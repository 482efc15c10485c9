"""Run a test's function on several gloo ranks over loopback, each in a spawned process.

``on_ranks(body, *args)`` is ``[body(0, world, *args), body(1, world, *args), ...]``, each call on
its own rank of one process group. The set-up and teardown are written once here, because they
are where multi-process tests go flaky:

- ``spawn``, never ``fork``: a fork after torch started its threads can deadlock;
- a timeout on the group, so a rank left waiting in a collective fails the test, not hangs it;
- a barrier before ``destroy_process_group``, so no rank tears down while another is in flight;
- ``os._exit(0)`` once the result is on disk and the group is gone. A rank has ended with
  ``terminate called without an active exception`` (SIGABRT) in full-suite runs, twice, in two
  tests, and never in 167 loaded reruns of one: a native thread met at interpreter teardown is
  the likely cause. A test's worker has nothing left to clean up, so it skips that teardown;
- ``faulthandler`` on, so a native crash inside the body still prints each thread's Python stack.
"""
from __future__ import annotations

import datetime
import faulthandler
import os
import socket
import sys
import tempfile

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, out_dir, timeout_s, body, args):
    import torch.distributed as dist

    faulthandler.enable()
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    torch.set_num_threads(1)  # the ranks share the cores
    try:
        torch.save(body(rank, world, *args), os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def on_ranks(body, *args, world: int = 2, timeout_s: float = 120.0) -> list:
    """``body(rank, world, *args)`` on each of ``world`` gloo ranks; the results, by rank.
    ``body`` must be a module-level function (it is pickled into the spawned processes) and
    return what ``torch.load(weights_only=True)`` reads back: tensors, numbers, strings, and
    lists, tuples and dicts of them."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_rank_main, args=(world, free_port(), out_dir, timeout_s, body, args), nprocs=world,
                           join=True, start_method="spawn")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]
