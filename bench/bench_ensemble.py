"""Ensemble executor vs local executor: cells per second, and FLOP/s vs the measured matmul peak.

For each model and N (number of cells), the same N cells (different lr, warmup, init seed) run
through :class:`catapult.sweep.ensemble.EnsembleExecutor` (one batched model per chunk) and,
for the local rate, through :func:`catapult.engine.run` one after another. Cells are
independent, so the local rate (cells/s) is measured on ``--local-cells`` of them (default 8)
and does not depend on N. Repetitions are interleaved (local, ensemble N=8, 32, 128, local,
...) and medians reported, because the machine is shared; the speedup is the median of the
per-repetition ratios (with their range).

FLOPs are counted analytically per training step of one member: ``2 B sum_l(n_in n_out)``
for the forward pass, twice that for the backward pass (weight and input gradients; the input
layer's input gradient is skipped), plus the final test evaluation (``2 n_test sum_l``), with
no sharpness (``eval.sharpness_every: 0``) so the count is exact. The peak is the median
FLOP/s of a ``2048 x 2048`` float32 ``torch.matmul`` measured in the same run, on the same
number of threads.

Models: ``fcn512`` = the warmup paper's Fig. 1 FCN (width 512, depth 4, SP) on digits, full
batch (1497 x 64, the Fig. 1 setting); ``fcn512-b128`` = the same FCN with minibatch SGD, batch
128 (the Fig. 3 phase-diagram setting, as ``configs/sweeps/fig3_fcn_cifar10.yaml``); ``mlp64``
= width 64, depth 3, full batch; ``mlp64-b128`` = the same with batch 128; ``mlp64-sharp`` =
full batch with the sharpness measured every 5 steps (batched Lanczos vs per-cell Lanczos;
FLOPs not counted); ``wrn10-b64`` = the small-WRN phase diagram's cells
(``configs/warmup/fig3_wrn_small.yaml``: WRN-10-1 with LayerNorm on the digits, batch 64, crop +
mixup, SGD without momentum, linear warmup then cosine), which go to the torch.func engine; its
FLOPs are counted by ``torch.utils.flop_counter`` (convolutions and matmuls, forward and
backward, as the MLP's analytic count), not derived by hand.

The ``ceiling`` column is ``1 / (local % of peak)``: the speedup an engine running the same
FLOPs at the full matmul peak would have over the local one, an upper bound for any batching.

    .venv/bin/python bench/bench_ensemble.py               # ~5 min on 1 thread
    .venv/bin/python bench/bench_ensemble.py --quick       # N = 8 only, 1 repetition
    .venv/bin/python bench/bench_ensemble.py --threads 2   # the goal's setting: both cores
    .venv/bin/python bench/bench_ensemble.py --device cuda --reps 2   # on a GPU
    .venv/bin/python bench/bench_ensemble.py --models wrn10-b64 --n 32 64 --reps 3 --clock cpu   # small-WRN phase diagram

``--threads`` is the torch thread count of both engines. With ``--workers K`` it is the count of
each of the ensemble's K worker processes, and the local engine and the matmul peak get
``K * threads``: ``--workers 2 --threads 1`` compares both cores with both cores.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from catapult import config as cfg
from catapult import engine as train
from catapult.sweep.ensemble import EnsembleExecutor
from catapult.sweep.executors import Cell

MODELS = {
    "fcn512": dict(model={"width": 512, "depth": 4, "parametrization": "sp"}, train={"steps": 5}),
    "fcn512-b128": dict(model={"width": 512, "depth": 4, "parametrization": "sp"},
                        train={"steps": 20, "batch_size": 128}),
    "mlp64": dict(model={"width": 64, "depth": 3, "parametrization": "sp"}, train={"steps": 20}),
    "mlp64-b128": dict(model={"width": 64, "depth": 3, "parametrization": "sp"},
                       train={"steps": 40, "batch_size": 128}),
    "mlp64-sharp": dict(model={"width": 64, "depth": 3, "parametrization": "sp"}, train={"steps": 20},
                        eval={"sharpness_every": 5}),
    # the small-WRN phase diagram's cells (configs/warmup/fig3_wrn_small.yaml): WRN-10-1, LayerNorm,
    # batch 64, crop + mixup, MSE; one chunk = one seed's lr x T_wrm grid (the group a sweep batches)
    "wrn10-b64": dict(model={"name": "wrn", "depth": 10, "widen": 1, "init": "trunc_normal",
                             "parametrization": "sp"},
                      train={"steps": 20, "batch_size": 64}, momentum=False,
                      data={"augment": {"flip": False, "crop": 1, "mixup": 0.2}},
                      schedule={"warmup": "linear", "lr_init": 0.0, "decay": "cosine"}),
}


def make_cells(name: str, n: int, device: str = "cpu") -> list[Cell]:
    """``n`` cells of model ``name`` differing in lr, warmup and (full batch) init seed."""
    spec = MODELS[name]
    minibatch = spec["train"].get("batch_size") is not None
    cells = []
    for i in range(n):
        config = {
            "name": f"{name}-{i}", "seed": 0 if minibatch else i, "device": device,
            "data": {"name": "digits", **spec.get("data", {})}, "model": {"name": "mlp", **spec["model"]},
            "optimizer": {"name": "sgd", "lr": 2e-3 * (1 + i % 8),
                          "momentum": 0.9 if i % 2 and spec.get("momentum", True) else 0.0},
            "schedule": {"warmup_steps": 1 + 4 * (i % 4), **spec.get("schedule", {})},
            "train": spec["train"],
            "eval": {"sharpness_every": 0, "test_every": 0, "sharpness_max_iter": 20, **spec.get("eval", {})},
        }
        cells.append(Cell(i, cfg.validate(config)))
    return cells


def flops_per_cell(cell: Cell) -> float:
    """Training + final-test FLOPs of one cell (see the module docstring); 0 with sharpness."""
    c = cell.config
    if c["eval"]["sharpness_every"] > 0:
        return 0.0
    if c["model"]["name"] != "mlp":
        return counted_flops(c)
    n_train, n_test, n_in, n_out = 1497, 300, 64, 10  # digits split sizes
    dims = [n_in] + [c["model"]["width"]] * (c["model"]["depth"] - 1) + [n_out]
    macs = [a * b for a, b in zip(dims[:-1], dims[1:])]
    batch = c["train"]["batch_size"] or n_train
    per_step = 2 * batch * (sum(macs) + 2 * sum(macs) - macs[0])
    forward_step = 2 * batch * sum(macs)  # the last row's forward (no update)
    return c["train"]["steps"] * per_step + forward_step + 2 * n_test * sum(macs)


def counted_flops(config) -> float:
    """Training + final-test FLOPs of one cell of any model, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and
    backward) on one step's forward + backward and on the test set's forward pass; element-wise
    ops (LayerNorm, ReLU, the update) are not counted, as in the MLP's analytic count."""
    from torch.utils.flop_counter import FlopCounterMode

    data = train.load_data(config)
    model = train.build_model(config, data.in_features, data.num_classes)
    batch = config["train"]["batch_size"] or len(data.x_train)
    x, y = data.x_train[:batch], data.y_train[:batch]
    with FlopCounterMode(display=False) as step:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(x)
    with FlopCounterMode(display=False) as test, torch.no_grad():
        model(data.x_test)
    return (config["train"]["steps"] * step.get_total_flops() + forward.get_total_flops()
            + test.get_total_flops())


#: the clock of every timing: ``time.perf_counter`` (wall, default) or ``time.process_time``
#: (``--clock cpu``: this process's CPU seconds, the steady figure on a shared host; one process,
#: so not with ``--workers``)
CLOCK = {"clock": time.perf_counter}


def clock() -> float:
    return CLOCK["clock"]()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """Median FLOP/s of an ``n x n`` float32 matmul on ``device`` (TF32 as torch's default)."""
    if device.startswith("cuda"):
        n, reps = max(n, 8192), max(reps, 20)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = clock()
        a @ b
        _sync(device)
        times.append(clock() - t0)
    return 2 * n ** 3 / statistics.median(times)


def time_local(cells: list[Cell]) -> float:
    t0 = clock()
    for cell in cells:
        result = train.run(cell.config, progress="none")
        assert result.status == "finished", (cell.id, result.status)
    _sync(cells[0].config["device"])
    return clock() - t0


def time_ensemble(cells: list[Cell], ex: EnsembleExecutor | None = None) -> tuple[float, list[int]]:
    """Seconds for ``cells`` through ``ex`` (a fresh one-process executor by default) and its
    chunk sizes."""
    ex = ex or EnsembleExecutor()
    ex.fallbacks, ex.chunks = [], []
    t0 = clock()
    results = dict(ex.run(cells))
    _sync(cells[0].config["device"])
    elapsed = clock() - t0
    assert not ex.fallbacks and all(r.status == "finished" for r in results.values())
    return elapsed, [len(c) for c in ex.chunks]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--n", nargs="*", type=int, default=[8, 32, 128])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--local-cells", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--quick", action="store_true", help="N = 8, one repetition")
    parser.add_argument("--workers", type=int, default=1,
                        help="ensemble worker processes (--threads each); the pool starts once, "
                             "before the timings, and its start-up time is printed")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall (default) or cpu: this process's CPU seconds for every rate and the "
                             "peak (one process and CPU only: the figure to read on a loaded host)")
    args = parser.parse_args(argv)
    if args.clock == "cpu":
        if args.workers > 1 or args.device != "cpu":
            parser.error("--clock cpu times this process on the CPU: not with --workers > 1 or a GPU")
        CLOCK["clock"] = time.process_time
    if args.quick:
        args.n, args.reps = [8], 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    torch.set_num_threads(args.threads * args.workers)  # the local engine's and the peak's
    started = time.perf_counter()
    # warm-up (imports, allocator, first-call costs) outside the timings
    warm = make_cells("mlp64", 2, args.device)
    time_local(warm[:1])
    time_ensemble(warm)
    executor = None
    if args.workers > 1:  # one pool for the whole run, as one sweep has
        executor = EnsembleExecutor(workers=args.workers, threads=args.threads)
        print(f"worker pool ({args.workers} processes) started and warm in "
              f"{time_ensemble(make_cells('mlp64', 2 * args.workers, args.device), executor)[0]:.2f} s", flush=True)
    peaks = [matmul_peak(device=args.device)]
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else (
        f"{args.threads} thread(s)" if args.workers == 1 else
        f"{args.threads * args.workers} thread(s), ensemble on {args.workers} workers x {args.threads}")
    print(f"torch {torch.__version__}, {where}; matmul peak {peaks[0] / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for name in args.models:
        all_cells = make_cells(name, max(args.n), args.device)
        local_cells = all_cells[: args.local_cells]
        local_rates, ens_rates = [], {n: [] for n in args.n}
        chunks = {}
        for rep in range(args.reps):
            local_rates.append(len(local_cells) / time_local(local_cells))
            for n in args.n:
                elapsed, chunks[n] = time_ensemble(all_cells[:n], executor)
                ens_rates[n].append(n / elapsed)
            peaks.append(matmul_peak(device=args.device))
            print(f"  {name} rep {rep}: local {local_rates[-1]:.2f} cells/s; ensemble "
                  + ", ".join(f"N={n} {ens_rates[n][-1]:.2f}" for n in args.n), flush=True)
        local = statistics.median(local_rates)
        flops = flops_per_cell(all_cells[0])
        for n in args.n:
            ens = statistics.median(ens_rates[n])
            # the speedup is the median of each repetition's ratio: a shared or throttled host
            # moves both engines' rates together within a repetition, far less across them
            ratios = [e / l for e, l in zip(ens_rates[n], local_rates)]
            rows.append(dict(model=name, n=n, local=local, ensemble=ens, speedup=statistics.median(ratios),
                             spread=(min(ratios), max(ratios)), flops=flops, chunks=chunks[n]))
    if executor is not None:
        executor.close()
    peak = statistics.median(peaks)
    print(f"\n{args.clock} clock; matmul peak (median of {len(peaks)}): {peak / 1e9:.1f} GFLOP/s on {where}; "
          f"total bench time {time.perf_counter() - started:.0f} s\n")
    print("| model | N | local cells/s | ensemble cells/s | speedup (range) | local % of peak | ensemble % of peak "
          "| ceiling | chunks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pct = (lambda rate: f"{100 * rate * r['flops'] / peak:.0f}%" if r["flops"] else "-")
        ceiling = f"{peak / (r['local'] * r['flops']):.1f}x" if r["flops"] else "-"
        chunk_text = f"{len(r['chunks'])} x {max(r['chunks'])}" if len(set(r["chunks"])) == 1 else \
            f"{len(r['chunks'])} (max {max(r['chunks'])})"
        print(f"| {r['model']} | {r['n']} | {r['local']:.2f} | {r['ensemble']:.2f} | {r['speedup']:.2f}x "
              f"({r['spread'][0]:.2f}-{r['spread'][1]:.2f}) | "
              f"{pct(r['local'])} | {pct(r['ensemble'])} | {ceiling} | {chunk_text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
