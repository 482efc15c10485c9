"""Probe: ours vs hessian-eigenthings at its oracle max_iter, at 1 and 2 torch threads, one process.

No scipy runs here (its OpenBLAS threads spin after a call and take a core from whatever runs
next; ``bench_peers.py`` sets one BLAS thread for that reason). The peer runs at the ``max_iter``
``bench_peers.py`` found per seed (the smallest within 1e-3 of the reference). Thread counts
alternate through ``torch.set_num_threads`` in each round; the first round warms up and the
second is timed. Prints the mean wall time per call and the ratio.

Usage:  .venv/bin/python bench/probe_threads.py [fcn1000|gpt]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import problem  # noqa: E402  (the same problems)

from catapult.curvature import sharpness  # noqa: E402
from catapult.curvature.hessian import math_attention  # noqa: E402

#: The peer's oracle max_iter per seed (bench_peers.py, RESULTS issue 16, section 1).
ORACLE = {"fcn1000": (14, 14, 10), "gpt": (11, 13, 14)}


def main(name: str = "gpt") -> None:
    import hessian_eigenthings as he

    model, loss, batch = problem(name)
    peer = he.HessianOperator(model, [batch], lambda m, b: loss(m(b[0]), b[1]))
    timed: dict[int, list[tuple[float, float]]] = {}
    for round_ in range(2):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for seed, m in enumerate(ORACLE[name]):
                start = time.perf_counter()
                sharpness(model, loss, batch, tol=1e-3, seed=seed)
                ours = time.perf_counter() - start
                with math_attention():  # the peer needs the twice-differentiable kernel
                    start = time.perf_counter()
                    he.lanczos(peer, k=1, max_iter=m, which="LA", seed=seed)
                    theirs = time.perf_counter() - start
                if round_:
                    timed.setdefault(threads, []).append((ours, theirs))
    for threads, rows in timed.items():
        ours, theirs = np.mean([r[0] for r in rows]), np.mean([r[1] for r in rows])
        print(f"{name} threads {threads}: ours {ours:.3f} s, peer {theirs:.3f} s, ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("problem", nargs="?", default="gpt", choices=["fcn1000", "gpt"])
    main(parser.parse_args().problem)
