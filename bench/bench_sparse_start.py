"""Benchmark: the start of ``sharpness`` on sparse inputs (COO, CSR) of >= 256 samples: ``coarse="auto"``
(the finite-difference level first, the sub-batch levels where it is skipped or where a kink is
guessed), the sub-batch levels given explicitly, with the sparse batch cut by rows
(``samples.sparse_rows``), a cold start (``coarse=None``) and the finite-difference level alone,
same run, interleaved per seed. The header of each problem says what a rule by non-zeros (the
batch's non-zeros counted as dense rows against ``COARSE_MIN_SAMPLES``) would choose.

Problems: ``bow``, a bag-of-words classifier (1024 samples x 2000 features at 1% density, a
2000-64-10 tanh MLP, cross-entropy; ``bow8k``: 8192 samples); ``mlp``, 1024 samples x 64 features with 70% zeros, a
64-128-128-10 tanh MLP, MSE; ``bow_relu``, ``bow`` with ReLU. Reported per problem, layout and
start: the largest relative difference from the dense input's answer (same start, same seed),
exact and coarse products per seed, mean CPU seconds and its ratio to the cold start's.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sparse_start.py [--problems bow,mlp,bow_relu] [--seeds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sharpness import Timer  # noqa: E402

from catapult.curvature import sharpness  # noqa: E402
from catapult.curvature.coarse import COARSE_LEVELS, COARSE_MIN_SAMPLES, SMALL_BATCH_LEVELS  # noqa: E402

STARTS = {"auto": "auto", "sub-batches, cut": list(COARSE_LEVELS), "cold (None)": None,
          "finite difference only": SMALL_BATCH_LEVELS}


def problem(name: str):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    act = torch.nn.ReLU if name.endswith("relu") else torch.nn.Tanh
    if name.startswith("bow"):
        n = 8192 if name.startswith("bow8k") else 1024
        x = (torch.rand(n, 2000, generator=gen) < 0.01).float()
        model = torch.nn.Sequential(torch.nn.Linear(2000, 64), act(), torch.nn.Linear(64, 10))
        return model, torch.nn.CrossEntropyLoss(), x, torch.randint(0, 10, (n,), generator=gen)
    x = torch.randn(1024, 64, generator=gen)
    x[x < 0.5] = 0
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), act(), torch.nn.Linear(128, 128), act(),
                                torch.nn.Linear(128, 10))
    return model, torch.nn.MSELoss(), x, torch.randn(1024, 10, generator=gen)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="bow,mlp,bow_relu")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
    print(f"# bench_sparse_start: torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load avg at start {os.getloadavg()[0]:.2f}")
    for name in args.problems.split(","):
        model, loss, x, y = problem(name)
        nonzeros = int((x != 0).sum())
        dense_rows = nonzeros // x.shape[1]   # the candidate rule's samples: dense rows of the same non-zeros
        print(f"\n## {name} ({tuple(x.shape)}, {float((x != 0).float().mean()):.0%} non-zero, {nonzeros} non-zeros: "
              f"{dense_rows} dense rows' worth; a rule by non-zeros would take "
              f"{'the sub-batch levels' if dense_rows >= COARSE_MIN_SAMPLES else 'no sub-batch levels'} on a sparse "
              f"layout, where auto takes them at {x.shape[0]} samples)\n\n"
              "| layout | start | max rel. diff. from dense | exact products | coarse products | CPU s (mean) | "
              "vs cold |\n|---|---|---|---|---|---|---|")
        layouts = {"dense": x, "coo": x.to_sparse(), "csr": x.to_sparse_csr()}
        runs = {(lay, start): [] for lay in layouts for start in STARTS}
        for coarse in STARTS.values():   # warm-up: each path once, untimed (the first call pays torch's set-ups)
            for inputs in layouts.values():
                sharpness(model, loss, (inputs, y), seed=0, coarse=coarse)
        for seed in range(args.seeds):
            dense = {}
            for start, coarse in STARTS.items():
                for lay, inputs in layouts.items():
                    with Timer() as t:
                        e = sharpness(model, loss, (inputs, y), seed=seed, coarse=coarse)
                    dense.setdefault(start, e.value)
                    runs[lay, start].append((abs(e.value - dense[start]) / abs(dense[start]), e.matvecs,
                                             e.coarse_matvecs, t.cpu))
        for lay in layouts:
            cold = np.mean([r[3] for r in runs[lay, "cold (None)"]])
            for start in STARTS:
                r = runs[lay, start]
                cpu = np.mean([x[3] for x in r])
                print(f"| {lay} | {start} | {max(x[0] for x in r):.1e} | {[x[1] for x in r]} | "
                      f"{[x[2] for x in r]} | {cpu:.3f} | {cpu / cold:.2f} |", flush=True)
    print(f"\nload avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
