"""The torch.func batched engine vs the local engine on a small GPT grid: cells per second.

The grid is the CPU-scale Fig. 4 setting (``configs/sweeps/fig4_gpt_small.yaml``: Pre-LN GPT,
SP, GELU, sinusoidal positions, embedded Shakespeare, minibatch Adam, cosine decay), shortened
to ``--steps`` steps: ``--cells`` cells over ``lr x warmup_steps`` with one seed (one batched
group). The batched engine (:func:`catapult.sweep.ensemble.run_batched`, the torch.func path) trains all of them at
once; the local engine (:func:`catapult.engine.run`) trains ``--local-cells`` of them one after
another (cells are independent, so its rate does not depend on the grid size). Repetitions
alternate (local, batched, local, ...) and medians are reported, as the machine is shared.

    .venv/bin/python bench/bench_batched.py --threads 2            # the issue's setting
    .venv/bin/python bench/bench_batched.py --threads 2 --quick     # 1 repetition
    .venv/bin/python bench/bench_batched.py --device cuda
    .venv/bin/python bench/bench_batched.py --threads 2 --mlp mlp64   # the ensemble's MLP kernels

``--mlp NAME`` (a model of ``bench/bench_ensemble.py``) instead times the same ``--cells`` MLP
cells through the ensemble executor (hand-derived MLP kernels) and through this engine, to
weigh the hand-derived fast path against the torch.func one. It runs alone, in a fresh process:
after the GPT grid's large allocations the ensemble's cache-sized kernels ran ~25x slower in
the same process (its temporaries are then mapped and faulted in afresh). The line ``agreement`` gives the
largest relative difference of the final training loss between the engines on the cells both
ran (float32: rounding, amplified by catapults; 0 would be suspicious only in float64).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from catapult import config as cfg
from catapult import engine as train
from catapult.sweep.ensemble import run_batched
from catapult.sweep.executors import Cell

sys.path.insert(0, str(Path(__file__).parent))  # bench_ensemble's cells


def grid(n_cells: int, steps: int, width: int, device: str, sharpness_every: int) -> list[Cell]:
    warmups = [w for w in (1, 4, 16, 64, 256) if w < steps][:4]  # the paper's, below the run length
    lrs = [1e-4 * 2 ** (x / 2) for x in range(max(1, -(-n_cells // len(warmups))))]
    cells = []
    for i in range(n_cells):
        config = {
            "name": f"gpt{i}", "seed": 0, "device": device,
            "data": {"name": "shakespeare", "context": 32, "n_train": 8192, "n_test": 256},
            "model": {"name": "gpt", "width": width, "depth": 2, "n_heads": 2, "activation": "gelu",
                      "positions": "sinusoidal", "parametrization": "sp"},
            "loss": "cross_entropy",
            "optimizer": {"name": "adam", "lr": lrs[i % len(lrs)]},
            "schedule": {"warmup": "linear", "decay": "cosine", "warmup_steps": warmups[i // len(lrs) % len(warmups)]},
            "train": {"steps": steps, "batch_size": 16},
            "eval": {"sharpness_every": sharpness_every, "test_every": 0},
        }
        cells.append(Cell(i, cfg.validate(config)))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=32)
    parser.add_argument("--local-cells", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--sharpness-every", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--mlp", default=None, help="also compare with the ensemble on this MLP model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 1 if args.quick else args.reps
    if args.mlp:
        compare_mlp(args.mlp, args.cells, args.device, args.threads, reps)
        return
    cells = grid(args.cells, args.steps, args.width, args.device, args.sharpness_every)
    train.load_data(cells[0].config)  # warm the data cache and imports for both engines
    dict(run_batched(cells[:2], threads=args.threads))

    local_rates, batched_rates, diffs = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        local_results = [train.run(cell.config, progress="none") for cell in cells[:args.local_cells]]
        local_rates.append(args.local_cells / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        results = dict(run_batched(cells, threads=args.threads))
        batched_rates.append(len(cells) / (time.perf_counter() - t0))
        assert len(results) == len(cells)
        for cell, local in zip(cells, local_results):
            a, b = local.summary["final_train_loss"], results[cell.id].summary["final_train_loss"]
            diffs.append(abs(a - b) / abs(a))
    local, batched = statistics.median(local_rates), statistics.median(batched_rates)
    print(f"GPT grid: {args.cells} cells (width {args.width}, depth 2, context 32, batch 16, "
          f"{args.steps} steps, adam, sharpness_every {args.sharpness_every}), "
          f"threads {torch.get_num_threads()}, device {args.device}, {reps} rep(s)")
    print(f"local   {local:8.3f} cells/s   (runs: {', '.join(f'{r:.3f}' for r in local_rates)})")
    print(f"batched {batched:8.3f} cells/s   (runs: {', '.join(f'{r:.3f}' for r in batched_rates)})")
    print(f"speedup {batched / local:8.2f}x   agreement: final train loss within {max(diffs):.2e} (relative)")


def compare_mlp(name: str, n: int, device: str, threads: int | None, reps: int) -> None:
    """Cells/s of the ensemble executor (hand-derived MLP kernels) and of this engine on the
    same ``n`` cells of ``bench_ensemble``'s model ``name``, alternating."""
    from bench_ensemble import make_cells

    from catapult.sweep.ensemble import EnsembleExecutor

    cells = make_cells(name, n, device)
    dict(EnsembleExecutor(threads=threads).run(cells[:2]))  # first-call costs (data, imports)
    dict(run_batched(cells[:2], threads=threads))
    ens_rates, fn_rates = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        ex = EnsembleExecutor(threads=threads)
        assert len(dict(ex.run(cells))) == n and not ex.fallbacks
        ens_rates.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        assert len(dict(run_batched(cells, threads=threads))) == n
        fn_rates.append(n / (time.perf_counter() - t0))
    ens, fn = statistics.median(ens_rates), statistics.median(fn_rates)
    print(f"MLP {name}: {n} cells, ensemble (hand-derived) {ens:.3f} cells/s, torch.func {fn:.3f} cells/s, "
          f"hand-derived / torch.func = {ens / fn:.2f}x")

if __name__ == "__main__":
    main()
