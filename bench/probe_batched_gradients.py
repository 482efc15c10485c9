"""Probe: are the small GPT's gradients cheaper when k parameter points share one batched call?

The finite-difference level of ``catapult.sharpness`` spends most of a GPT call on gradients,
one per product (RESULTS, issue 16, section 1). Block Lanczos would take k difference products
at once, ``g(theta + h u_i)`` for i < k, and it pays only if k gradients cost well under k times
one. Here ``torch.func.vmap(torch.func.grad(loss))`` runs over k stacked copies of the
parameters, each moved by 1e-4 x a normal draw, under ``math_attention()``: the CPU's fused
attention kernel has no batching rule, so vmap would loop over it.

Prints the median wall time of one gradient (fused and math attention), and of k = 2, 4, 8
batched, per vector. One thread by default (``--threads``).

Usage:  .venv/bin/python bench/probe_batched_gradients.py [--threads 1] [--reps 15]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.func import functional_call, grad, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import problem  # noqa: E402  (the same GPT and batch)

from catapult.curvature.hessian import math_attention  # noqa: E402


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[reps // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, loss, (x, y) = problem("gpt")
    params = {name: p.detach() for name, p in model.named_parameters()}
    gradient = grad(lambda p: loss(functional_call(model, p, (x,)), y))

    one = median_ms(lambda: gradient(params), args.reps)
    print(f"threads {args.threads}; one gradient, fused attention: {one:.1f} ms")
    with math_attention():
        one_math = median_ms(lambda: gradient(params), args.reps)
        print(f"one gradient, math attention: {one_math:.1f} ms")
        for k in (2, 4, 8):
            points = {name: p.expand(k, *p.shape) + 1e-4 * torch.randn(k, *p.shape) for name, p in params.items()}
            batched = median_ms(lambda: vmap(gradient)(points), args.reps)
            print(f"k = {k}: {batched:.1f} ms batched, {batched / k:.1f} ms per gradient "
                  f"({batched / k / one:.2f}x one fused gradient)")


if __name__ == "__main__":
    main()
