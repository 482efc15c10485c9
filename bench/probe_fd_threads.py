"""Probe: float32 finite-difference sharpness (``hvp="finite_difference"``) against torch's thread
count, with the certificate's ``error_bound`` beside the spread and the float64 truth.

For each problem and seed, one process runs the same call at 1, 2, 3 and 4 threads
(``torch.set_num_threads``) and prints the relative spread of the values between thread counts,
the largest reported bound, and each value's error against a float64 exact-product solve at
tol 1e-10. What changes with the threads is the order of float32 reductions (GEMM splits over the
batch dimension in the weight gradients, torch's parallel sums): each gradient rounds differently,
and a difference product divides that rounding by its step ``h``.

Usage:  .venv/bin/python bench/probe_fd_threads.py [--seeds 3]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

import catapult


def problems():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    mlp = nn.Sequential(nn.Linear(32, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))
    yield "tanh MLP 32-256-256-10, 2048 samples", mlp, nn.CrossEntropyLoss(), (
        torch.randn(2048, 32, generator=gen), torch.randint(0, 10, (2048,), generator=gen))
    gelu = nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 10))
    yield "GELU MLP 64-512-10, 4096 samples", gelu, nn.CrossEntropyLoss(), (
        torch.randn(4096, 64, generator=gen), torch.randint(0, 10, (4096,), generator=gen))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args(argv)
    threads0 = torch.get_num_threads()
    print(f"# probe_fd_threads: torch {torch.__version__}, tol {args.tol}\n")
    print("| problem | seed | values at 1/2/3/4 threads | spread (rel.) | bounds | max error vs float64 | "
          "error <= bound |\n|---|---|---|---|---|---|---|")
    for name, model, loss_fn, batch in problems():
        truth = catapult.sharpness(model, loss_fn, batch, dtype=torch.float64, tol=1e-10, max_iter=300).value
        for seed in range(args.seeds):
            ests = []
            for threads in (1, 2, 3, 4):
                torch.set_num_threads(threads)
                ests.append(catapult.sharpness(model, loss_fn, batch, hvp="finite_difference", tol=args.tol,
                                               seed=seed, coarse=None))
            torch.set_num_threads(threads0)
            values = [e.value for e in ests]
            spread = (max(values) - min(values)) / abs(truth)
            errors = [abs(v - truth) / abs(truth) for v in values]
            print(f"| {name} | {seed} | {' / '.join(f'{v:.7g}' for v in values)} | {spread:.1e} | "
                  f"{' / '.join(f'{e.error_bound:.1e}' for e in ests)} | {max(errors):.1e} | "
                  f"{all(err <= e.error_bound for err, e in zip(errors, ests))} |", flush=True)


if __name__ == "__main__":
    main()
