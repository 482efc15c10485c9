"""Probe: where the ensemble's time goes on a GPU -- a fixed cost per cell or chunk, or the step.

``bench_ensemble.py`` times whole cells of 5-40 steps, so its cells/s mixes set-up (data, model,
the final test evaluation) with the training step. This probe separates them: each engine runs
the same cells at two step counts, and the difference gives the marginal cost of one step; the
ratio of the local engine's per-step cost to the ensemble's per-member per-step cost is the
speedup a long sweep would see. With ``--profile`` it also counts, for one ensemble chunk, the
CUDA kernels launched and the host synchronisations (``aten::_local_scalar_dense``, i.e.
``.item()`` and friends) per training step.

It first trains one small run on ``--device`` and on the CPU in float64 and prints the final
losses' relative gap (``--device cuda`` is a documented promise; not bitwise, float64 to ~1e-12).

    python bench/probe_gpu_step_cost.py --device cuda --profile     # through the device tool
    .venv/bin/python bench/probe_gpu_step_cost.py --device cpu --models mlp64 --n 8   # a CPU smoke
    python bench/probe_gpu_step_cost.py --device cuda --models wrn10-b64 --n 128 --profile-only --top-ops 15
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_ensemble import MODELS, _sync, clock, make_cells, time_ensemble, time_local  # noqa: E402

from catapult import config as cfg  # noqa: E402
from catapult import engine  # noqa: E402


def with_steps(cells, steps):
    out = []
    for cell in cells:
        c = copy.deepcopy(cell.config)
        c["train"]["steps"] = steps
        out.append(type(cell)(cell.id, cfg.validate(c)))
    return out


def device_equality(device: str) -> None:
    base = {"name": "eq", "seed": 0, "dtype": "float64", "data": {"name": "digits", "n_train": 256, "n_test": 64},
            "model": {"name": "mlp", "width": 64, "depth": 3}, "optimizer": {"name": "sgd", "lr": 0.05},
            "train": {"steps": 30}, "eval": {"sharpness_every": 10, "test_every": 10}}
    runs = {d: engine.run(cfg.validate(dict(base, device=d)), progress="none") for d in ("cpu", device)}
    a, b = (runs[d].summary for d in ("cpu", device))
    for key in ("final_train_loss", "final_sharpness"):
        if key in a and a[key] is not None:
            gap = abs(a[key] - b[key]) / max(abs(a[key]), 1e-30)
            print(f"train on cpu vs {device} (float64): {key} {a[key]:.12g} vs {b[key]:.12g}, relative gap {gap:.1e}")


def profile_chunk(cells, steps: int, top_ops: int = 0) -> None:
    from torch.profiler import ProfilerActivity, profile

    from catapult.sweep.ensemble import EnsembleExecutor

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    cells = with_steps(cells, steps)
    time_ensemble(cells)   # warm-up
    with profile(activities=activities) as prof:
        time_ensemble(cells, EnsembleExecutor())
    kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    syncs = sum(1 for e in prof.events() if e.name == "aten::_local_scalar_dense")
    launches = sum(1 for e in prof.events() if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    print(f"  profile, N={len(cells)}, {steps} steps: {kernels} kernels ({kernels / steps:.0f}/step), "
          f"{launches} launch calls, {syncs} host syncs ({syncs / steps:.1f}/step)")
    if top_ops:
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=top_ops, max_name_column_width=60))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="*", default=["mlp64", "mlp64-b128", "fcn512-b128"], choices=list(MODELS))
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--local-cells", type=int, default=4)
    parser.add_argument("--steps", nargs=2, type=int, default=[20, 220])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top-ops", type=int, default=0, metavar="K",
                        help="with --profile: print the K operators of most (self) device time")
    parser.add_argument("--profile-only", action="store_true", help="skip the timings: the profile alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.profile_only:
        device_equality(args.device)
    short, long = args.steps
    for name in args.models:
        cells = make_cells(name, args.n, args.device)
        if args.profile_only:
            profile_chunk(cells, short, args.top_ops)
            continue
        time_ensemble(with_steps(cells[:2], short))   # warm-up: kernels, allocator, data
        time_local(with_steps(cells[:1], short))
        local = {s: time_local(with_steps(cells[:args.local_cells], s)) / args.local_cells for s in (short, long)}
        ensemble = {s: time_ensemble(with_steps(cells, s))[0] / args.n for s in (short, long)}
        local_step = (local[long] - local[short]) / (long - short)
        ensemble_step = (ensemble[long] - ensemble[short]) / (long - short)
        print(f"{name} on {args.device}, N={args.n}: per cell, fixed {local[short] - short * local_step:.4f} s local, "
              f"{ensemble[short] - short * ensemble_step:.4f} s ensemble; per step {local_step * 1e3:.3f} ms local, "
              f"{ensemble_step * 1e3:.3f} ms per member in the ensemble; steady-state speedup "
              f"{local_step / ensemble_step:.1f}x; at {short} steps {local[short] / ensemble[short]:.1f}x, "
              f"at {long} {local[long] / ensemble[long]:.1f}x")
        if args.profile:
            profile_chunk(cells, short, args.top_ops)
        _sync(args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
