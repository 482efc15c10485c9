"""Which tensors make up the peak memory of one sharpness call (issue 16, item 3).

Runs one call under ``torch.profiler`` (CPU, ``profile_memory=True``, Python stacks), replays
the allocation events in time order and, at the moment the live bytes above the start peak,
lists every live allocation of at least ``--min-mb`` with the innermost ``catapult`` frame (file,
line, function) that made it, grouped. Sizes are also given in parameter-sized vectors (``P``).

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/memory_census.py --n 1000 [--memory lean]
        [--what sharpness|train_step] [--min-mb 1] [--hvp auto|finite_difference] [--coarse none]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from bench_sharpness import make_batch, make_model, mse  # noqa: E402

import catapult  # noqa: E402


def _label(chain) -> str:
    """The innermost catapult (else bench) Python frame of an allocation's ancestors, plus the
    innermost op."""
    op = next((e.name for e in reversed(chain) if not e.name.startswith("[") and "/" not in e.name
               and "(" not in e.name), "?")
    for e in reversed(chain):
        name = e.name
        if "catapult" in name and ".py(" in name:
            where = name.split("catapult/")[-1]
            return f"{where} | {op}"
    for e in reversed(chain):
        if ".py(" in e.name and "bench" in e.name:
            return f"{e.name.split('/')[-1]} | {op}"
    return f"? | {op}"


def census(run, min_bytes: int):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, with_stack=True) as prof:
        run()
    events = []

    def walk(e, chain):
        if e.typed and type(e.typed[1]).__name__ == "_ExtraFields_Allocation":
            f = e.typed[1]
            events.append((e.start_time_ns, int(f.ptr), int(f.alloc_size), chain))
        for ch in e.children:
            walk(ch, chain + [e])

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, [])
    events.sort(key=lambda t: t[0])
    live, total, peak, at_peak = {}, 0, 0, {}
    for _, ptr, size, chain in events:
        if size > 0:
            live[ptr] = (size, chain)
            total += size
        else:
            old = live.pop(ptr, None)
            if old is not None:
                total -= old[0]
        if total > peak:
            peak = total
            at_peak = {p: (s, _label(c)) for p, (s, c) in live.items() if s >= min_bytes}
    return peak, at_peak


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--memory", default="lean")
    parser.add_argument("--what", default="sharpness")
    parser.add_argument("--min-mb", type=float, default=1.0)
    parser.add_argument("--coarse", default="auto")
    parser.add_argument("--hvp", default="auto")
    args = parser.parse_args(argv)
    if args.hvp == "finite_difference":
        # the ReLU FCN's checked difference products are refused in float32 (their steps cross
        # kinks: catapult.curvature.difference); the memory is measured with the check off
        from catapult.curvature import difference
        difference.MAX_GAP = float("inf")
    model, batch = make_model("sp"), make_batch(args.n)
    P = sum(p.numel() * p.element_size() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def run():
        if args.what == "train_step":
            opt.zero_grad()
            mse(model(batch[0]), batch[1]).backward()
            opt.step()
        else:
            est = catapult.sharpness(model, mse, batch, tol=1e-3, memory=args.memory,
                                     coarse=None if args.coarse == "none" else "auto",
                                     hvp=args.hvp)
            print(f"matvecs {est.matvecs} (+{est.coarse_matvecs}), value {est.value:.6g}")

    import warnings
    warnings.simplefilter("ignore")
    peak, at_peak = census(run, int(args.min_mb * 2**20))
    groups = collections.Counter()
    counts = collections.Counter()
    for size, label in at_peak.values():
        groups[label] += size
        counts[label] += 1
    print(f"{args.what} memory={args.memory} n={args.n}: peak {peak / 2**20:.1f} MiB = "
          f"{peak / P:.2f} P (P = {P / 2**20:.2f} MiB)")
    for label, size in groups.most_common():
        print(f"  {size / 2**20:7.1f} MiB {size / P:5.2f} P  x{counts[label]:<3d} {label}")
    rest = peak - sum(groups.values())
    print(f"  {rest / 2**20:7.1f} MiB {rest / P:5.2f} P  (allocations < {args.min_mb} MiB)")


if __name__ == "__main__":
    main()
