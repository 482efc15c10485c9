"""Does a WRN cell's ensemble result depend on which cells share its chunk? And what does the
copy beside a lone member cost?

``bits``: small WRN grids (WRN-10-1 on the digits, float32, the torch.func engine) run as one
chunk per group, in chunks of 2 (``max_members=2``), and each cell alone (what a resumed sweep
runs for its last cell), at one torch thread count. Each arrangement's rows (every column of
``metrics``) and summary (time keys left out) are compared with the whole-chunk run's, bit for
bit. ``alone, unpadded`` is a cell alone without the copy (``run_group(pad_lone=False)``: the
code before the copy). Scenarios:

* ``table1``: ``configs/adam/table1_wrn_small.yaml``'s model and data (crop + mixup, batch 64,
  cross-entropy), Adam / GI-Adam / RAdam at lr 0.00512, 0.08192, 1.31072, T_wrm 1, 3 groups of
  3 cells; the high lrs diverge, so the survivors train on alone inside their chunk;
* ``lambda0``: SGD at ``2^k/lambda0`` with the sharpness every 3 steps (lambda_0 sets the lr;
  members' Lanczos solves stop at different iterations);
* ``fwd-chunked``: SGD with momentum, forward-over-reverse products on micro-batches of 16;
* ``survivor``: SGD at lr 0.05, 30 and 50 with ``train.divergence_factor: 2``: the two high lrs
  diverge in the first steps and the third cell trains on alone inside the whole chunk.

``cost``: one cell of ``table1`` (Adam, lr 0.00512) alone, with and without the copy, process
CPU time per run, repetitions alternated; with and without the sharpness every 5 steps.

    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_wrn_chunks.py bits --steps 20
    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_wrn_chunks.py bits --steps 20 --only survivor
    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_wrn_chunks.py cost --steps 30 --reps 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from catapult import config as cfg
from catapult.sweep.batched import run_group
from catapult.sweep.ensemble import EnsembleExecutor
from catapult.sweep.executors import Cell, torch_threads

TABLE1 = {"data": {"name": "digits", "augment": {"flip": False, "crop": 1, "mixup": 0.2}},
          "model": {"name": "wrn", "depth": 10, "widen": 1, "parametrization": "sp", "init": "trunc_normal"},
          "loss": "cross_entropy", "schedule": {"warmup": "linear", "warmup_steps": 1, "lr_init": 0.0, "decay": "cosine"},
          "train": {"batch_size": 64}, "eval": {"sharpness_every": 0, "test_every": 10}}
SMALL = {"data": {"name": "digits", "n_train": 128, "n_test": 64},
         "model": {"name": "wrn", "depth": 10, "widen": 1, "init": "trunc_normal"},
         "loss": "cross_entropy", "train": {"batch_size": 32}}


def _config(base, steps, i, **over):
    config = {**base, "name": f"c{i}", **over, "train": {**base["train"], **over.get("train", {}), "steps": steps}}
    for key in ("eval",):
        if key in over:
            config[key] = {**base.get(key, {}), **over[key]}
    return cfg.validate(config)


def scenarios(steps: int) -> dict[str, list[Cell]]:
    table1 = [Cell(i, _config(TABLE1, steps, i, optimizer={"name": name, "lr": lr}))
              for i, (name, lr) in enumerate((n, lr) for n in ("adam", "gi-adam", "radam")
                                             for lr in (0.00512, 0.08192, 1.31072))]
    ev = {"sharpness_every": 3, "test_every": 5, "sharpness_max_iter": 20, "lambda0_batches": 1}
    lambda0 = [Cell(i, _config(SMALL, steps, i, optimizer={"name": "sgd", "lr": f"2^{k}/lambda0"}, eval=ev))
               for i, k in enumerate((-1, 0, 1))]
    ev = {**ev, "sharpness_hvp": "forward_over_reverse", "sharpness_chunk_size": 16}
    fwd = [Cell(i, _config(SMALL, steps, i, optimizer={"name": "sgd", "lr": lr, "momentum": 0.9}, eval=ev))
           for i, lr in enumerate((0.01, 0.05, 0.2))]
    survivor = [Cell(i, _config(SMALL, steps, i, optimizer={"name": "sgd", "lr": lr},
                                train={"divergence_factor": 2.0}, eval={"test_every": 5}))
                for i, lr in enumerate((0.05, 30.0, 50.0))]
    return {"table1": table1, "lambda0": lambda0, "fwd-chunked": fwd, "survivor": survivor}


def _timeless(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if "time" not in k and "per_second" not in k}


def _first_difference(a, b) -> str:
    """'equal', or the first step and column where ``b`` differs from ``a`` and by how much."""
    if a.status != b.status:
        return f"status {a.status} vs {b.status}"
    for ra, rb in zip(a.metrics, b.metrics):
        for key, va in ra.items():
            vb = rb.get(key)
            if va != vb:
                rel = (abs(va - vb) / max(abs(va), 1e-30) if isinstance(va, float) and isinstance(vb, float)
                       else float("nan"))
                return f"step {ra['step']} {key} {rel:.1e}"
    if len(a.metrics) != len(b.metrics):
        return "row count"
    if _timeless(a.summary) != _timeless(b.summary):
        return "summary"
    return "equal"


def bits(steps: int, threads: int, only: list[str] | None = None) -> None:
    for name, cells in scenarios(steps).items():
        if only and name not in only:
            continue
        whole = dict(EnsembleExecutor(kernels=False, threads=threads).run(cells))
        arrangements = {"chunks of 2": dict(EnsembleExecutor(kernels=False, threads=threads, max_members=2).run(cells))}
        alone, unpadded = {}, {}
        for cell in cells:
            alone.update(EnsembleExecutor(kernels=False, threads=threads).run([cell]))
            with torch_threads(threads):
                unpadded.update(run_group([cell], pad_lone=False))
        arrangements["alone"] = alone
        arrangements["alone, unpadded"] = unpadded
        statuses = ", ".join(f"{c.id}:{whole[c.id].status}@{len(whole[c.id].metrics) - 1}" for c in cells)
        print(f"{name}: {len(cells)} cells, {steps} steps, {threads} thread(s); statuses {statuses}")
        for label, results in arrangements.items():
            diffs = [_first_difference(whole[c.id], results[c.id]) for c in cells]
            print(f"  {label:16s} {sum(d == 'equal' for d in diffs)}/{len(cells)} bit-identical; "
                  + "; ".join(f"c{c.id}: {d}" for c, d in zip(cells, diffs) if d != "equal"))


def cost(steps: int, reps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    for sharp in (0, 5):
        ev = {"sharpness_every": sharp, "test_every": 10, "sharpness_max_iter": 20, "lambda0_batches": 1}
        cell = Cell(0, _config(TABLE1, steps, 0, optimizer={"name": "adam", "lr": 0.00512}, eval=ev))
        times = {True: [], False: []}
        for pad in (False, True):  # warm-up: first-call costs (imports, kernels) out of the timing
            dict(run_group([cell], pad_lone=pad))
        for _ in range(reps):
            for pad in (False, True):
                t = time.process_time()
                dict(run_group([cell], pad_lone=pad))
                times[pad].append(time.process_time() - t)
        a, b = statistics.median(times[False]), statistics.median(times[True])
        print(f"sharpness_every {sharp}: alone {a:.2f} s, beside a copy {b:.2f} s (CPU, median of {reps}; "
              f"{steps} steps): x{b / a:.2f}; ratios " + ", ".join(f"{p / q:.2f}" for p, q in zip(times[True], times[False])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["bits", "cost"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", help="bits: these scenarios only")
    args = parser.parse_args()
    if args.mode == "bits":
        bits(args.steps, args.threads, args.only)
    else:
        cost(args.steps, args.reps, args.threads)


if __name__ == "__main__":
    main()
