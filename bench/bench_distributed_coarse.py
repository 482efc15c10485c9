"""The coarse start under ``distributed=True`` (catapult.curvature.coarse_ranks): products and wall
time of ``sharpness`` on 2 gloo ranks (loopback, one thread each, contiguous shards) with the
default coarse start against a cold start, and one process on the union, same run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_distributed_coarse.py [--n 4096] [--width 128] [--repeats 4] [--ranks-only]

Prints one row per setting: exact products, coarse products, their full-batch-equivalent cost,
the median wall and CPU seconds per call (rank 0's: each rank holds half the samples) and the
value.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import catapult
from catapult.curvature.coarse import COARSE_LEVELS, SMALL_BATCH_LEVELS


def problem(n: int, seed: int, width: int = 128):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    # a few SGD steps, so the top of the spectrum is not the initialisation's
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, nn.CrossEntropyLoss(), (x, y)


#: the settings, each call alternated with the others: "auto", the sub-batch levels forced, the
#: finite-difference level forced, a cold start
SETTINGS = (("auto", "auto"), ("sub-batch", list(COARSE_LEVELS)), ("difference", list(SMALL_BATCH_LEVELS)),
            ("None", None))


def measure(model, loss_fn, batch, repeats: int, **kw) -> list:
    times = {name: [] for name, _ in SETTINGS}
    cpu = {name: [] for name, _ in SETTINGS}
    ests = {}
    for r in range(repeats):
        for name, coarse in SETTINGS[r % len(SETTINGS):] + SETTINGS[:r % len(SETTINGS)]:
            if kw.get("distributed"):
                dist.barrier()
            start, start_cpu = time.perf_counter(), time.process_time()
            ests[name] = catapult.sharpness(model, loss_fn, batch, coarse=coarse, **kw)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return [(name, ests[name].matvecs, ests[name].coarse_matvecs, ests[name].coarse_cost,
             statistics.median(times[name]), statistics.median(cpu[name]), ests[name].value) for name, _ in SETTINGS]


def rank_main(rank: int, world: int, port: int, n: int, width: int, repeats: int, out):
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    model, loss_fn, (x, y) = problem(n, 0, width)
    lo, hi = rank * n // world, (rank + 1) * n // world
    rows = measure(model, loss_fn, (x[lo:hi], y[lo:hi]), repeats, distributed=True)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        out.put(rows)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--ranks-only", action="store_true", help="skip the one-process run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, loss_fn, batch = problem(args.n, 0, args.width)
    params = sum(p.numel() for p in model.parameters())
    print(f"width {args.width}: {params} parameters; per-rank work of a coarsest product "
          f"{params * (args.n // 2 // COARSE_LEVELS[0][0]):.3g} parameter-samples")
    single = [] if args.ranks_only else measure(model, loss_fn, batch, args.repeats)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, 2, port, args.n, args.width, args.repeats, queue)) for r in range(2)]
    for p in procs:
        p.start()
    ranks = queue.get()
    for p in procs:
        p.join()
    print("| run | coarse | exact products | coarse products | coarse cost | wall s per call | CPU s per call | value |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in ((f"width {args.width}, 1 process, n = {args.n}", single),
                       (f"width {args.width}, 2 ranks, {args.n // 2} each", ranks)):
        for coarse, matvecs, coarse_matvecs, cost, seconds, cpu, value in rows:
            print(f"| {name} | {coarse} | {matvecs} | {coarse_matvecs} | {cost:.2f} | {seconds:.3f} | {cpu:.3f} | "
                  f"{value:.6g} |")


if __name__ == "__main__":
    main()
