"""The float64 check of a float32 pre-conditioned solve (catapult.curvature.certify.checked_in_float64):
whether its bound covers the error, and what it costs on a shipped config.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_preconditioned_check.py bn [--seeds 12]
    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_preconditioned_check.py fig2 [--repeats 2]
    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_preconditioned_check.py fig2-ensemble [--repeats 2] [--steps 300]

``bn``: a Linear(3, 4) -> BatchNorm1d -> Tanh -> Linear(4, 1) net at Adam's first step (the bias before the
train-mode BatchNorm has zero gradient, so ``P`` ~ ``(1 - b1) eps`` there), 8 samples, MSE: per seed and
tol, the float32 value's relative error against the float64 dense value, the bound and ``converged``
without the check (the rounding's reach taken as 0, the code before) and with it, the reach, and
whether the check ran. ``fig2``: ``configs/adam/fig2_mechanisms.yaml`` at 60 steps (warmup 16), adam
and gi-adam, with the check left out and in, interleaved: measurements, checks, the checks' own time
and the run's wall time (1 thread). ``fig2-ensemble``: the whole ``fig2_mechanisms`` sweep (8 cells,
``--steps`` each) through ``catapult sweep --executor ensemble --threads 1`` (the batched engines:
adam on the hand kernels, gi-adam on torch.func), with the batched engines' check left out (their
solves kept as they came, the code before) and in, interleaved: measurements, checks, the marks the
check took from 1 to 0, the checks' own CPU time (reach and float64 check), and the sweep's wall and CPU time (one thread: CPU time is what a
loaded host does not stretch).
"""
from __future__ import annotations

import argparse
import importlib
import tempfile
import time

import numpy as np
import torch

import catapult

S = importlib.import_module("catapult.curvature.sharpness")
REACH, CERTIFIED = S.rounding_reach, S.float32_certified


def hooks(on: bool, log: list):
    """Put the reach (0 where ``on`` is False: the code before) and a timed check into the solver."""
    def reach(d, y, g, reduce=None):
        r = REACH(d, y, g, reduce) if on else 0.0
        log.append({"reach": r, "checked": False, "time": 0.0})
        return r

    def certified(ests, reaches, tols, product=None, **kw):
        start = time.perf_counter()
        out = CERTIFIED(ests, reaches, tols, product, **kw)
        if product is not None:   # the float64 check ran
            log[-1].update(checked=True, time=time.perf_counter() - start)
        return out

    S.rounding_reach, S.float32_certified = reach, certified


def bn_case(seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(),
                                    torch.nn.Linear(4, 1))
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.nn.functional.mse_loss(model(x), y).backward()
    return model, opt, (x, y)


def bn_truth(model, batch, b1=0.9, eps=1e-8) -> float:
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]
    x, y = batch[0].double(), batch[1].double()
    buffers = {n: b.detach().clone().double() if b.is_floating_point() else b.clone() for n, b in model.named_buffers()}

    def loss(flat):
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(flat, [s.numel() for s in shapes]), shapes)}
        return torch.nn.functional.mse_loss(functional_call(model, {**buffers, **params}, (x,)), y)

    H = torch.autograd.functional.hessian(loss, theta).numpy()
    g = torch.autograd.functional.jacobian(loss, theta).numpy()
    P = (1 - b1) * (np.abs(g) + eps)
    return float(np.linalg.eigvalsh(H / np.sqrt(P)[:, None] / np.sqrt(P)[None, :])[-1])


def run_bn(seeds: int) -> None:
    print("| tol | seed | error | before: bound (converged) | after: bound (converged) | reach | checked |")
    print("|---|---|---|---|---|---|---|")
    for tol in (1e-5, 1e-4, 1e-3):
        for seed in range(seeds):
            row = []
            for on in (False, True):
                log = []
                hooks(on, log)
                model, opt, batch = bn_case(seed)
                truth = bn_truth(model, batch)
                est = catapult.preconditioned_sharpness(model, torch.nn.functional.mse_loss, batch, opt, tol=tol,
                                                        max_iter=200)
                err = abs(est.value - truth) / abs(truth)
                mark = "**" if est.converged and err > est.error_bound else ""
                row.append((err, f"{mark}{est.error_bound:.2g} ({'yes' if est.converged else 'no'}){mark}", log[-1]))
            (err, before, _), (_, after, info) = row
            print(f"| {tol:g} | {seed} | {err:.2g} | {before} | {after} | {info['reach']:.2g} | "
                  f"{'yes' if info['checked'] else 'no'} |", flush=True)


def run_fig2(repeats: int) -> None:
    from catapult.cli import main

    print("| optimizer | check | measurements | checked | checks' time s | run wall s |")
    print("|---|---|---|---|---|---|")
    for _ in range(repeats):
        for name in ("adam", "gi-adam"):
            for on in (False, True):
                log = []
                hooks(on, log)
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    main(["train", "configs/adam/fig2_mechanisms.yaml", "train.steps=60", "schedule.warmup_steps=16",
                          f"optimizer.name={name}", "--out", out, "--overwrite", "--progress", "none", "--threads", "1"])
                    wall = time.perf_counter() - start
                print(f"| {name} | {'in' if on else 'out'} | {len(log)} | {sum(r['checked'] for r in log)} | "
                      f"{sum(r['time'] for r in log):.2f} | {wall:.1f} |", flush=True)


def run_fig2_ensemble(repeats: int, steps: int) -> None:
    from catapult.cli import main

    loop = importlib.import_module("catapult.sweep.batched_loop")
    certified = loop.float32_certified
    print("| check | measurements | checked | marks 1 -> 0 | checks' time s | sweep wall s | sweep CPU s |")
    print("|---|---|---|---|---|---|---|")
    for _ in range(repeats):
        for on in (False, True):
            log = []

            def hook(ests, reaches, tols, product=None, **kw):
                start, marks = time.process_time(), [e.converged for e in ests]
                out = certified(ests, reaches, tols, product, **kw) if on else ests
                flips = sum(m and not e.converged for m, e in zip(marks, out))
                log.append((len(ests), sum(r > t for r, t in zip(reaches, tols)), time.process_time() - start, flips))
                return out

            loop.float32_certified = hook
            with tempfile.TemporaryDirectory() as out:
                start, cpu = time.perf_counter(), time.process_time()
                main(["sweep", "configs/adam/fig2_mechanisms.yaml", f"train.steps={steps}", "--store", f"{out}/s.db",
                      "--executor", "ensemble", "--threads", "1", "--progress", "none"])
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            loop.float32_certified = certified
            print(f"| {'in' if on else 'out'} | {sum(r[0] for r in log)} | {sum(r[1] for r in log) if on else 0} | "
                  f"{sum(r[3] for r in log)} | {sum(r[2] for r in log):.2f} | {wall:.1f} | {cpu:.1f} |", flush=True)


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["bn", "fig2", "fig2-ensemble"])
    parser.add_argument("--seeds", type=int, default=12, help="BatchNorm seeds (bn)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (fig2, fig2-ensemble)")
    parser.add_argument("--steps", type=int, default=300, help="train.steps of each cell (fig2-ensemble)")
    args = parser.parse_args()
    if args.part == "bn":
        run_bn(args.seeds)
    elif args.part == "fig2":
        run_fig2(args.repeats)
    else:
        run_fig2_ensemble(args.repeats, args.steps)


if __name__ == "__main__":
    main_()
