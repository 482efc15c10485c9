"""memory="lean" on small models: the 1 MiB floor on a micro-batch's activations
(``catapult.curvature.lean.LEAN_MIN_CHUNK_BYTES``) against the relative rule alone (floor 0), in
one process, alternating: loss evaluations, products, seconds (min over ``--reps``) and the value.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_lean_floor.py [--reps 3]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import catapult
from catapult.curvature import lean
from catapult.curvature.sharpness import memory_setting

PROBLEMS = {  # name: (layer widths, samples)
    "mlp-4x6x2x2 (50 params)": ((4, 6, 2, 2), 64),
    "mlp-10x16x4 (244 params)": ((10, 16, 4), 256),
    "mlp-20x32x32x10 (2,058 params)": ((20, 32, 32, 10), 512),
}


def problem(widths, n):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    return model, (torch.randn(n, widths[0]), torch.randn(n, widths[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| problem | floor | chunk_size | loss evaluations | products | s (min) | value |")
    print("|---|---|---|---|---|---|---|")
    for name, (widths, n) in PROBLEMS.items():
        model, batch = problem(widths, n)
        calls = [0]

        def loss_fn(out, y):
            calls[0] += 1
            return nn.functional.mse_loss(out, y)

        rows = {}
        for _ in range(args.reps):
            for floor in (0, lean.LEAN_MIN_CHUNK_BYTES if lean.LEAN_MIN_CHUNK_BYTES else 2 ** 20):
                saved, lean.LEAN_MIN_CHUNK_BYTES = lean.LEAN_MIN_CHUNK_BYTES, floor
                try:
                    chunk = memory_setting("lean", batch, None, None, model, loss_fn)[0]
                    calls[0] = 0
                    start = time.perf_counter()
                    est = catapult.sharpness(model, loss_fn, batch, memory="lean")
                    seconds = time.perf_counter() - start
                finally:
                    lean.LEAN_MIN_CHUNK_BYTES = saved
                best = rows.get(floor)
                rows[floor] = (chunk, calls[0], est.matvecs, min(seconds, best[3]) if best else seconds, est.value)
        for floor, (chunk, evals, products, seconds, value) in rows.items():
            print(f"| {name} | {'1 MiB' if floor else 'none'} | {chunk or 'whole'} | {evals} | {products} | "
                  f"{seconds:.3f} | {value:.10g} |")


if __name__ == "__main__":
    main()
