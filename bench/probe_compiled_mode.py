"""Probe (issue 16, section 1i): ``catapult.sharpness`` with ``hvp="compiled"`` against the
default ``hvp="auto"`` on one problem of ``bench_peers.py``, the two modes alternating per seed
in one process.

The first compiled call is timed apart (it compiles). Then come three rounds over seeds 0-2, the
first a warm-up. The script prints each mode's mean CPU seconds per call over rounds 2-3, with the
exact products, the start level's products and the values of each seed, which must be the same in
both modes.

``--backend aot_eager`` compiles with dynamo's ``aot_eager`` backend in place of inductor (a probe
of whether a compile without code generation, seconds instead of tens of seconds, keeps the gain).

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/probe_compiled_mode.py [--problem gpt|fcn1000|fcn2500|gpt_bpe]
        [--backend inductor|aot_eager]
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import problem  # noqa: E402

import catapult  # noqa: E402

MODES = ("auto", "compiled")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="gpt", choices=("gpt", "gpt_bpe", "fcn1000", "fcn2500"))
    parser.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager"),
                        help="torch.compile backend of hvp='compiled' (default: inductor, as shipped)")
    args = parser.parse_args()
    if args.backend != "inductor":  # catapult.curvature.compiled calls torch.compile(fn)
        torch.compile = functools.partial(torch.compile, backend=args.backend)
    model, loss, batch = problem(args.problem)
    start = time.perf_counter()
    catapult.sharpness(model, loss, batch, tol=1e-3, seed=0, hvp="compiled")
    print(f"{args.problem}, {torch.get_num_threads()} thread(s), {args.backend}: first compiled call "
          f"{time.perf_counter() - start:.1f} s wall", flush=True)
    times = {mode: [] for mode in MODES}
    answers = {}
    for round_ in range(3):
        for seed in range(3):
            for mode in MODES:
                cpu = time.process_time()
                est = catapult.sharpness(model, loss, batch, tol=1e-3, seed=seed, hvp=mode)
                if round_:
                    times[mode].append(time.process_time() - cpu)
                answers[mode, seed] = (est.matvecs, est.coarse_matvecs, round(est.value, 5))
    for mode in MODES:
        print(f"{mode}: {statistics.mean(times[mode]):.3f} s CPU per call; (exact, start-level "
              f"products, value) per seed {[answers[mode, s] for s in range(3)]}")


if __name__ == "__main__":
    main()
