"""Benchmark: should ``coarse="auto"`` try the finite-difference level first on batches of 256
samples or more (one process), falling back to the sub-batch levels where its kink check skips it?

Same run, per model family, every setting alternated (the order rotated each repeat), CPU
seconds of this process per ``sharpness`` call (median), tol 1e-3:

* ``sub-batch``: the levels ``"auto"`` takes now at >= 256 samples (``COARSE_LEVELS``);
* ``difference``: the finite-difference level alone (``SMALL_BATCH_LEVELS``);
* ``cold``: ``coarse=None``;
* ``difference first (run)``: the difference level then the sub-batch levels, given explicitly (what
  ``"auto"`` took at >= 256 samples before the kink guess, and still takes without a kink);
* ``auto``: ``coarse="auto"`` (with the kink guess: a float32 model holding a kinked activation
  module, or whose loss's graph holds a kinked op, starts at the sub-batch levels);
* ``difference first`` (the candidate rule), derived from the same calls: the ``difference`` call
  where its level ran, and where its kink check skipped it (2 coarse products) the ``sub-batch``
  call plus what the skip cost (``difference`` less ``cold``: the check's two gradients).

Families (float32 unless named): ``tanh`` and ``relu`` MLPs 32-128-128-10 after 20 SGD steps
(cross-entropy, 4096 samples), ``frelu`` the ReLU MLP calling ``F.relu`` (no ReLU module),
``relu64`` the ReLU MLP in float64, ``gpt`` the project's GPT
(vocabulary 65, width 64, 2 layers, 4 heads, GELU) on 256 sequences of 32 tokens with per-sequence
targets, ``cnn`` a tanh CNN (two 3x3 convolutions of 16 channels, 8x8 inputs, 1024 samples), ``cnnmax``
that CNN with ``nn.MaxPool2d(2)`` after each convolution, ``cnnamax`` with a global max over each
channel (``x.amax(dim=(2, 3))``) after the second.

With ``--ranks``: 2 gloo ranks on loopback (one thread each, contiguous halves of ``--n``
samples, 8192 by default, where ``coarse_ranks.sub_batch_pays`` takes the sub-batch levels for the
MLPs), rank 0's CPU seconds.

``graph walk ms``: one walk of the loss's graph (``twice.graph_functions``, made at every operator
build, where the kinked ops are now marked), median of 20, one process only.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_first_start.py [--problems tanh,relu,frelu,relu64,gpt,cnn,cnnmax,cnnamax] [--repeats 4] [--ranks] [--n N]
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
import torch.nn.functional as F

import catapult
from catapult.curvature.coarse import COARSE_LEVELS, SMALL_BATCH_LEVELS

SETTINGS = (("sub-batch", list(COARSE_LEVELS)), ("difference", list(SMALL_BATCH_LEVELS)), ("cold", None),
            ("difference first", list(SMALL_BATCH_LEVELS + COARSE_LEVELS)), ("auto", "auto"))


def _trained(model, x, y, loss_fn, steps=20, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


def problem(name: str, n: int | None = None):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if name in ("tanh", "relu", "relu64", "frelu"):
        act = nn.Tanh if name == "tanh" else nn.ReLU
        n = n or 4096
        model = nn.Sequential(nn.Linear(32, 128), act(), nn.Linear(128, 128), act(), nn.Linear(128, 10))
        if name == "frelu":   # the same network calling F.relu: no module for coarse.KINKED_ACTIVATIONS
            model = FunctionalRelu(model)
        x, y = torch.randn(n, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
        if name == "relu64":
            model, x = model.double(), x.double()
        return _trained(model, x, y, F.cross_entropy), nn.CrossEntropyLoss(), (x, y)
    if name == "gpt":
        from catapult.models import GPT
        model = GPT(65, d_model=64, n_layers=2, n_heads=4, context=32)
        tokens = torch.randint(0, 65, (n or 256, 33), generator=gen)

        def loss_fn(out, y):   # a mean over tokens: the same per sequence, so sub-batches cut sequences
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return model, loss_fn, (tokens[:, :-1], tokens[:, 1:])
    if name == "cnn":
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 16, 3, padding=1), nn.Tanh(),
                              nn.Flatten(), nn.Linear(16 * 64, 10))
        n = n or 1024
        x, y = torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)
        return _trained(model, x, y, F.cross_entropy), nn.CrossEntropyLoss(), (x, y)
    if name in ("cnnmax", "cnnamax"):   # the tanh CNN with max-pooling: nn.MaxPool2d(2) after each convolution,
        # or ("cnnamax") a global max over each channel's 8x8 map (x.amax(dim=(2, 3)), a reduction)
        pool = name == "cnnmax"
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), *([nn.MaxPool2d(2)] if pool else []),
                              nn.Conv2d(16, 16, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2) if pool else GlobalMax(),
                              nn.Flatten(), nn.Linear(16 * 4 if pool else 16, 10))
        n = n or 1024
        x, y = torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)
        return _trained(model, x, y, F.cross_entropy), nn.CrossEntropyLoss(), (x, y)
    raise SystemExit(f"unknown problem {name!r}")


class GlobalMax(nn.Module):
    """Each channel's largest value (``x.amax(dim=(2, 3))``: a max reduction, no pooling module)."""

    def forward(self, x):
        return x.amax(dim=(2, 3))


class FunctionalRelu(nn.Module):
    """``layers``' Linear modules with ``F.relu`` between them (the kink is seen in the graph only)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(m for m in layers if isinstance(m, nn.Linear))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def walk_seconds(model, loss_fn, batch, repeats=20):
    """Median seconds of one ``twice.graph_functions`` walk of the loss's graph (the walk every
    operator build makes, now also marking kinked ops)."""
    from catapult.curvature.twice import graph_functions
    x, y = batch
    loss = loss_fn(model(x), y)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        graph_functions(loss)
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(model, loss_fn, batch, repeats, **kw):
    cpu = {name: [] for name, _ in SETTINGS}
    ests = {}
    for name, coarse in SETTINGS:   # warm-up, untimed
        catapult.sharpness(model, loss_fn, batch, coarse=coarse, **kw)
    for r in range(repeats):
        for name, coarse in SETTINGS[r % len(SETTINGS):] + SETTINGS[:r % len(SETTINGS)]:
            if kw.get("distributed"):
                dist.barrier()
            start = time.process_time()
            ests[name] = catapult.sharpness(model, loss_fn, batch, coarse=coarse, seed=0, **kw)
            cpu[name].append(time.process_time() - start)
    return {name: (ests[name], statistics.median(cpu[name])) for name, _ in SETTINGS}


def rank_main(rank, world, port, name, n, repeats, out):
    """One gloo rank: contiguous shards of ``n`` samples; rank 0's CPU seconds (what it returns)."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    model, loss_fn, (x, y) = problem(name, n)
    lo, hi = rank * n // world, (rank + 1) * n // world
    got = measure(model, loss_fn, (x[lo:hi], y[lo:hi]), repeats, distributed=True)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        out.put({k: (e.matvecs, e.coarse_matvecs, e.value, t) for k, (e, t) in got.items()})


class _Est:
    def __init__(self, matvecs, coarse_matvecs, value):
        self.matvecs, self.coarse_matvecs, self.value = matvecs, coarse_matvecs, value


def on_two_ranks(name, n, repeats):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, 2, port, name, n, repeats, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = queue.get()
    for p in procs:
        p.join()
    return {k: (_Est(*v[:3]), v[3]) for k, v in got.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="tanh,relu,frelu,relu64,gpt,cnn")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--ranks", action="store_true", help="2 gloo ranks (contiguous halves; rank 0's CPU)")
    parser.add_argument("--n", type=int, default=None, help="samples (the union's with --ranks)")
    args = parser.parse_args(argv)
    print(f"# bench_first_start: torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load avg at start {os.getloadavg()[0]:.2f}\n")
    print("| family | sub-batch | difference | cold | difference level | difference first "
          "(derived) | difference first (run) | auto | sub-batch / cold | difference first (run) / cold | "
          "auto / cold | auto / difference first | graph walk ms | values |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.problems.split(","):
        if args.ranks:
            got = on_two_ranks(name, args.n or 8192, args.repeats)
        else:
            model, loss_fn, batch = problem(name, args.n)
            got = measure(model, loss_fn, batch, args.repeats)
        (sub, t_sub), (fd, t_fd), (cold, t_cold), (first, t_run), (auto, t_auto) = (got[n] for n, _ in SETTINGS)
        walk = float("nan") if args.ranks else walk_seconds(*problem(name, args.n))
        skipped = fd.coarse_matvecs == 2
        t_first = t_sub + (t_fd - t_cold) if skipped else t_fd

        def shown(e, t):
            return f"{e.matvecs} + {e.coarse_matvecs}: {t:.3f}"
        print(f"| {name} | {shown(sub, t_sub)} | {shown(fd, t_fd)} | {shown(cold, t_cold)} | "
              f"{'skipped (kinks)' if skipped else 'ran'} | {t_first:.3f} | {shown(first, t_run)} | "
              f"{shown(auto, t_auto)} | {t_sub / t_cold:.2f} | {t_run / t_cold:.2f} | {t_auto / t_cold:.2f} | "
              f"{t_auto / t_run:.2f} | {walk * 1e3:.3f} | "
              f"{sub.value:.6g} / {fd.value:.6g} / {cold.value:.6g} / {auto.value:.6g} |", flush=True)
    print(f"\nload avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
