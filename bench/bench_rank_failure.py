"""Benchmark: the cost of the failed-rank check in each distributed product (2 gloo ranks).

``DistributedOperator`` lets a rank whose product raised join the product's all-reduce with a
vector of nan, and every rank reads the sum's first entry: nan, and it asks (one more all-reduce)
whether a rank failed, so that every rank raises within that product instead of waiting for the
group's timeout. This times ``catapult.sharpness(..., distributed=True, tol=1e-3)`` on the issue's
Fig. 1 FCN (bench_peers' ``fcn1000``: 500 samples a rank) and small GPT (``gpt``: 8 sequences a
rank), with the checked product and with the product as it was before
(``all_reduce_sum(op(v) * w)``, patched in), interleaved in the same processes, one thread a rank;
then one product alone on one operator, each way. Prints, per problem, the median wall seconds
of a solve each way (rank 0's clock, after a barrier), the products, the median milliseconds of
one product, and the ratios checked / before.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_rank_failure.py [--reps 7] [--problems fcn1000,gpt]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def body(rank, world, port, problems, reps):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    import catapult
    from bench_peers import problem
    from catapult.curvature import distributed as dist_ops
    from catapult.curvature.sharpness import build_operator

    checked = dist_ops.DistributedOperator.__call__

    def before(self, v):   # the product as it was: no flag
        if self._diverged:
            self._skipped += 1
            return torch.full_like(v, float("nan"))
        return dist_ops.all_reduce_sum(self.op(v).mul_(self.weight))

    for name in problems:
        model, loss, (x, y) = problem(name)
        per = x.shape[0] // world
        shard = (x[rank * per:(rank + 1) * per], y[rank * per * (y.shape[0] // x.shape[0]):
                                                  (rank + 1) * per * (y.shape[0] // x.shape[0])])
        times = {"before": [], "checked": []}
        products = {}
        for rep in range(reps + 1):
            order = ("before", "checked") if rep % 2 else ("checked", "before")
            for kind in order:
                dist_ops.DistributedOperator.__call__ = checked if kind == "checked" else before
                dist.barrier()
                t = time.perf_counter()
                est = catapult.sharpness(model, loss, shard, tol=1e-3, seed=rep, distributed=True)
                if rep:   # the first round warms up
                    times[kind].append(time.perf_counter() - t)
                products[kind] = est.matvecs
        # one product alone, on one operator, each way interleaved (the solve's own cost per product)
        op = build_operator(model, loss, shard, distributed=True)
        v = torch.randn(op.numel, generator=torch.Generator().manual_seed(0), dtype=op.dtype)
        one = {"before": [], "checked": []}
        for rep in range(3 * reps + 1):
            for kind in (("before", "checked") if rep % 2 else ("checked", "before")):
                dist_ops.DistributedOperator.__call__ = checked if kind == "checked" else before
                dist.barrier()
                t = time.perf_counter()
                op(v)
                if rep:
                    one[kind].append(time.perf_counter() - t)
        dist_ops.DistributedOperator.__call__ = checked
        if rank == 0:
            b, f = statistics.median(times["before"]), statistics.median(times["checked"])
            pb, pf = 1e3 * statistics.median(one["before"]), 1e3 * statistics.median(one["checked"])
            print(f"{name} ({op.numel} parameters): solve before {b:.3f} s, checked {f:.3f} s (median of {reps}), "
                  f"products {products['before']} / {products['checked']}, ratio {f / b:.3f}; one product "
                  f"before {pb:.2f} ms, checked {pf:.2f} ms (median of {3 * reps}), ratio {pf / pb:.3f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)   # skip the interpreter's teardown (a native gloo thread; tests/gloo_ranks.py)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--problems", default="fcn1000,gpt")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(body, args=(2, port, args.problems.split(","), args.reps), nprocs=2)
