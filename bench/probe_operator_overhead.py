"""Probe: the fixed costs of the curvature operator on the small GPT of bench_peers.py (many small
ops, where per-call Python shows): median CPU milliseconds of building a ``HessianOperator``, of
one product, and of a default ``catapult.sharpness`` call at tol 1e-3. Run it on two trees (one
with its src/ first on PYTHONPATH), alternating, to compare:

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/probe_operator_overhead.py
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/old/src .venv/bin/python bench/probe_operator_overhead.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return sorted(times)[repeats // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="gpt", help="a bench_peers problem (gpt, fcn1000, ...)")
    parser.add_argument("--repeats", type=int, default=15, help="calls per measurement (the median is kept)")
    args = parser.parse_args()
    import catapult
    from bench_peers import problem
    from catapult.curvature.hessian import HessianOperator

    torch.set_num_threads(1)
    model, loss, batch = problem(args.problem)
    op = HessianOperator(model, loss, batch)
    v = torch.randn(op.numel)
    op(v)   # first-call costs
    print(f"{catapult.__file__.split('/src/')[0]}: construct {median_ms(lambda: HessianOperator(model, loss, batch), args.repeats):.2f} ms, "
          f"product {median_ms(lambda: op(v), args.repeats):.2f} ms, "
          f"sharpness {median_ms(lambda: catapult.sharpness(model, loss, batch, tol=1e-3), max(3, args.repeats // 2)):.1f} ms",
          flush=True)


if __name__ == "__main__":
    main()
