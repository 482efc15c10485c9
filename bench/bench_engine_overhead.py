"""Engine overhead: a local ``catapult.engine.run`` vs a bare PyTorch loop, same model, data, batches.

The engine (the code behind ``catapult train``) runs with ``progress="none"``, no ``out_dir``,
no sharpness (``eval.sharpness_every: 0``) and no test evaluation but the final one
(``eval.test_every: 0``), at a constant lr (``schedule.lr_init = optimizer.lr``,
``warmup_steps: 1``), so it does exactly the work of the bare loop below plus its own
book-keeping. The bare loop gets a fresh ``catapult.engine.build_run(config)`` (the same MLP
with the same initial weights, the same data on the same device), ``torch.optim.<Class>(model
.parameters(), lr=...)`` of the same class and hyper-parameters, and the same batches (full
batch, or per epoch ``torch.randperm(n, generator=data_gen)`` from the run's data seed, last
incomplete batch dropped). Per step: forward, loss, backward, step; then one more forward (the
engine's row ``steps``) and the test loss/accuracy, as the engine's final row has. Two bare
variants: ``bare+item`` calls ``loss.item()`` every step (the engine logs the loss, so it has
to sync); ``bare`` does not.

What is timed. The engine: ``engine.run(config)`` minus the time of its own ``build_run`` call
(data loading and model init, ~0.25 s for digits, the same code the bare loop uses; measured by
wrapping ``catapult.engine.loop.build_run`` for this process only), i.e. the loop, the summary
and the records. The bare loops: the loop and the final evaluation; their ``build_run`` is not
timed. Both clocks are read: wall time and this process's CPU time (``time.process_time``;
with one torch thread it is the time the work ran, without the waits of a CPU shared with
other jobs, so it is the steadier figure on a loaded host). Each repetition runs the three in
an alternating order (engine, bare+item, bare, then the reverse) in one process; the ratio
``engine / bare`` is formed per repetition and its median and range are printed, so a shared
host's load moves numerator and denominator together.
The final training loss of all three must agree (the bench checks it to 1e-6 relative), so the
timed work is the same.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py            # both cases, 6 reps (~8 min on a loaded 2-core host)
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py --quick    # smoke test
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py --profile gd   # cProfile of the engine

Cases: ``gd`` = the digits MLP (width 256, depth 4, SP, MSE), full-batch SGD (lr 0.05);
``adam-b128`` = the same MLP, minibatch Adam (lr 1e-3, batch 128).
"""
from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import sys
import time

import torch

from catapult import engine
from catapult.engine import loop as engine_loop

_MLP = {"name": "mlp", "width": 256, "depth": 4, "parametrization": "sp"}
CASES = {
    "gd": dict(optimizer={"name": "sgd", "lr": 0.05}, batch_size=None, steps=100),
    "adam-b128": dict(optimizer={"name": "adam", "lr": 1e-3}, batch_size=128, steps=400),
}


def make_config(case: str, steps: int | None = None) -> dict:
    """The engine config of ``case``: constant lr, no sharpness, test only at the end."""
    spec = CASES[case]
    return {
        "name": f"overhead-{case}", "seed": 0, "device": "cpu", "data": {"name": "digits"}, "model": dict(_MLP),
        "optimizer": dict(spec["optimizer"]),
        "schedule": {"warmup_steps": 1, "lr_init": spec["optimizer"]["lr"]},  # lr_t = lr for every t
        "train": {"steps": spec["steps"] if steps is None else steps, "batch_size": spec["batch_size"]},
        "eval": {"sharpness_every": 0, "test_every": 0},
    }


def _now() -> tuple[float, float]:
    """``(wall seconds, this process's CPU seconds)``."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _now()
    return wall - start[0], cpu - start[1]


class _TimedBuild:
    """Stands in for ``build_run`` inside ``engine.loop`` and records the (wall, CPU) seconds of
    its call."""

    def __init__(self, build):
        self.build, self.seconds = build, (0.0, 0.0)

    def __call__(self, config):
        start = _now()
        try:
            return self.build(config)
        finally:
            self.seconds = _since(start)


def time_engine(config: dict) -> tuple[tuple[float, float], float]:
    """``((wall, CPU) seconds of engine.run less its build_run, final train loss)``."""
    timed = _TimedBuild(engine_loop.build_run)
    engine_loop.build_run = timed
    try:
        start = _now()
        result = engine.run(config, progress="none")
        total = _since(start)
    finally:
        engine_loop.build_run = timed.build
    assert result.status == "finished", result.status
    return (total[0] - timed.seconds[0], total[1] - timed.seconds[1]), result.metrics[-1]["train_loss"]


def _bare_optimizer(config: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = config["optimizer"]
    if o["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"],
                               weight_decay=o["weight_decay"])
    if o["name"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                weight_decay=o["weight_decay"])
    raise ValueError(f"no bare loop for optimizer {o['name']!r}")


def time_bare(config: dict, item: bool) -> tuple[tuple[float, float], float]:
    """``((wall, CPU) seconds of the bare loop and its final evaluation, final train loss)``;
    set-up untimed."""
    setup = engine.build_run(config)
    config = setup.config
    model, loss_fn = setup.model, setup.loss_fn
    x_all, y_all, x_test, y_test = setup.data.x_train, setup.data.y_train, setup.data.x_test, setup.data.y_test
    steps, batch_size = config["train"]["steps"], config["train"]["batch_size"]
    optimizer = _bare_optimizer(config, model)
    data_gen = torch.Generator().manual_seed(setup.seeds[1])
    n = x_all.shape[0]
    per_epoch = n // batch_size if batch_size else 1
    start = _now()
    x, y, perm = x_all, y_all, None
    for t in range(steps + 1):
        if batch_size:
            b = t % per_epoch
            if b == 0:
                perm = torch.randperm(n, generator=data_gen)
            idx = perm[b * batch_size:(b + 1) * batch_size]
            x, y = x_all[idx], y_all[idx]
        loss = loss_fn(model(x), y)
        if item or t == steps:
            last = loss.item()
        if t < steps:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(x_test)
        loss_fn(out, y_test).item(), (out.argmax(-1) == y_test.reshape(-1)).double().mean().item()
    model.train()
    return _since(start), last


def profile_engine(config: dict, top: int = 25) -> None:
    """cProfile of one ``engine.run`` (cumulative time, the ``top`` largest entries)."""
    engine.run(config, progress="none")  # warm
    prof = cProfile.Profile()
    prof.enable()
    engine.run(config, progress="none")
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def bench_case(case: str, reps: int, steps: int | None) -> dict:
    """Alternating repetitions of the engine and both bare loops on ``case``; per-repetition
    ratios of wall and CPU time (see the module docstring)."""
    config = make_config(case, steps)
    runners = {"engine": lambda: time_engine(config),
               "bare+item": lambda: time_bare(config, item=True),
               "bare": lambda: time_bare(config, item=False)}
    for run in runners.values():  # warm-up: first-call costs outside the timings
        run()
    times = {k: [] for k in runners}  # (wall, cpu) per repetition
    losses = {}
    for rep in range(reps):
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for name in order:
            seconds, losses[name] = runners[name]()
            times[name].append(seconds)
        print(f"  {case} rep {rep}: " + ", ".join(
            f"{k} {times[k][-1][0]:.3f} s (cpu {times[k][-1][1]:.3f})" for k in runners), flush=True)
    ref = losses["engine"]
    for name, value in losses.items():  # the same trajectory, so the same work was timed
        assert math.isclose(value, ref, rel_tol=1e-6), (case, name, value, ref)
    n_steps = config["train"]["steps"]
    row = dict(case=case, steps=n_steps, loss=ref, ratio={}, ms_per_step={}, overhead_us={})
    for i, clock in enumerate(("wall", "cpu")):
        for base in ("bare+item", "bare"):
            ratios = [e[i] / b[i] for e, b in zip(times["engine"], times[base])]
            row["ratio"][clock, base] = (statistics.median(ratios), min(ratios), max(ratios))
        row["ms_per_step"][clock] = {k: 1e3 * statistics.median(t[i] for t in v) / n_steps for k, v in times.items()}
        row["overhead_us"][clock] = 1e6 * statistics.median(
            [(e[i] - b[i]) / n_steps for e, b in zip(times["engine"], times["bare+item"])])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--steps", type=int, default=None, help="override every case's step count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 reps of 30 steps")
    parser.add_argument("--profile", choices=list(CASES), help="print a cProfile of the engine on this case")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.reps, args.steps = 2, 30
    if args.profile:
        profile_engine(make_config(args.profile, args.steps))
        return 0
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    rows = [bench_case(case, args.reps, args.steps) for case in args.cases]
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s; {args.reps} repetitions; ratio = median "
          "(min-max) of the per-repetition engine/bare ratios; ms/step = median time / steps\n")
    print("| case | clock | steps | engine ms/step | bare+item ms/step | bare ms/step | engine / bare+item "
          "| engine / bare | engine - bare+item, us/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for clock in ("wall", "cpu"):
            ms = r["ms_per_step"][clock]
            ratio = (lambda base: "{:.3f} ({:.3f}-{:.3f})".format(*r["ratio"][clock, base]))
            print(f"| {r['case']} | {clock} | {r['steps']} | {ms['engine']:.3f} | {ms['bare+item']:.3f} | "
                  f"{ms['bare']:.3f} | {ratio('bare+item')} | {ratio('bare')} | {r['overhead_us'][clock]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
