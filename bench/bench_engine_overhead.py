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

Two measures. ``step``: the median time of one step inside a run (consecutive timestamps taken
where a row is logged, after the backward pass: the engine's through its progress display,
wrapped for this process only; the bare loop's at the same place), which is the issue's
"a step within 5% of a bare loop" and ignores the bursts in which another job held the core.
``run``: the whole run's time over ``steps``, which adds the engine's per-run costs.

What is timed for ``run``. The engine: ``engine.run(config)`` minus the time of its own ``build_run`` call
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

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py            # both cases, 6 reps (~5 min, loaded host)
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py --quick    # smoke test
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py --profile gd   # cProfile of the engine
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py --extras       # the step's extras, alone
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py --in-loop --cases adam-b128 --reps 3  # inside a step
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_engine_overhead.py --cases adam-b128 --write  # the engine writes a run dir

``--extras`` times each thing the engine's step does beyond the bare loop (the threshold, the
accuracy, the schedule, the metrics row, the param groups (parametrize.param_groups) in ``optimizer.step()``)
alone, best of 7 in CPU time, as a share of the bare step: a noise-free account of the overhead.

Cases: ``gd`` = the digits MLP (width 256, depth 4, SP, MSE), full-batch SGD (lr 0.05);
``adam-b128`` = the same MLP, minibatch Adam (lr 1e-3, batch 128).
"""
from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import statistics
import sys
import time

import torch

from catapult import engine
from catapult.engine import loop as engine_loop
from catapult.engine.progress import Progress

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


class _StampedProgress(Progress):
    """The engine's progress display (mode ``"none"``) that also appends ``_now()`` to
    :attr:`stamps` each time a row is logged: after the backward pass of step ``t``, before its
    update, so consecutive stamps are one whole step apart."""

    stamps: list = []

    def update(self, row):
        _StampedProgress.stamps.append(_now())
        super().update(row)


def step_median(stamps: list[tuple[float, float]]) -> tuple[float, float]:
    """Median (wall, CPU) seconds between consecutive stamps ``t - 1`` and ``t`` for
    ``t = 1 .. steps - 1`` (the last interval holds the final test evaluation and is left out).
    A median over hundreds of steps ignores the bursts in which another job held the core."""
    inner = stamps[:-1]
    return tuple(statistics.median(b[i] - a[i] for a, b in zip(inner[:-1], inner[1:])) for i in (0, 1))


Timing = tuple[tuple[float, float], tuple[float, float], float]  # (run, step median, final train loss)


def time_engine(config: dict, write: bool = False) -> Timing:
    """``engine.run``: (wall, CPU) seconds of the run less its build_run, the median (wall, CPU)
    seconds of one step, and the final train loss. ``write``: into a run directory (a temporary
    folder), as ``catapult train --out`` does: ``metrics.csv`` rows at every step, and the run's
    files at the end (in the run's time, not in its steps')."""
    import tempfile

    timed = _TimedBuild(engine_loop.build_run)
    engine_loop.build_run, engine_loop.Progress = timed, _StampedProgress
    _StampedProgress.stamps = []
    folder = tempfile.TemporaryDirectory() if write else None
    try:
        start = _now()
        result = engine.run(config, progress="none", out_dir=None if folder is None else os.path.join(folder.name, "run"))
        total = _since(start)
    finally:
        engine_loop.build_run, engine_loop.Progress = timed.build, Progress
        if folder is not None:
            folder.cleanup()
    assert result.status == "finished", result.status
    assert len(_StampedProgress.stamps) == config["train"]["steps"] + 1
    run_seconds = (total[0] - timed.seconds[0], total[1] - timed.seconds[1])
    return run_seconds, step_median(_StampedProgress.stamps), result.metrics[-1]["train_loss"]


def _bare_optimizer(config: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = config["optimizer"]
    if o["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"],
                               weight_decay=o["weight_decay"])
    if o["name"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                weight_decay=o["weight_decay"])
    raise ValueError(f"no bare loop for optimizer {o['name']!r}")


def time_bare(config: dict, item: bool) -> Timing:
    """The bare loop: (wall, CPU) seconds of the loop and its final evaluation (set-up untimed),
    the median (wall, CPU) seconds of one step (stamped where the engine stamps), and the final
    train loss."""
    setup = engine.build_run(config)
    config = setup.config
    model, loss_fn = setup.model, setup.loss_fn
    x_all, y_all, x_test, y_test = setup.data.x_train, setup.data.y_train, setup.data.x_test, setup.data.y_test
    steps, batch_size = config["train"]["steps"], config["train"]["batch_size"]
    optimizer = _bare_optimizer(config, model)
    data_gen = torch.Generator().manual_seed(setup.seeds[1])
    n = x_all.shape[0]
    per_epoch = n // batch_size if batch_size else 1
    stamps = []
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
        stamps.append(_now())
        if t < steps:
            optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(x_test)
        loss_fn(out, y_test).item(), (out.argmax(-1) == y_test.reshape(-1)).double().mean().item()
    model.train()
    return _since(start), step_median(stamps), last


def _best_us(fn, repeat: int = 7, number: int = 200) -> float:
    """Fastest of ``repeat`` timings of ``number`` calls of ``fn``, in CPU microseconds per call
    (the minimum: another job's interference only adds time)."""
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - t0) / number)
    return 1e6 * best


def _best_pair_us(fa, fb, repeat: int = 15, number: int = 100) -> tuple[float, float]:
    """:func:`_best_us` of ``fa`` and ``fb``, their timings alternating (so a burst of load hits
    both alike)."""
    fa(), fb()
    best = [math.inf, math.inf]
    for _ in range(repeat):
        for i, fn in enumerate((fa, fb)):
            t0 = time.process_time()
            for _ in range(number):
                fn()
            best[i] = min(best[i], (time.process_time() - t0) / number)
    return 1e6 * best[0], 1e6 * best[1]


def engine_extras(case: str) -> list[tuple[str, float]]:
    """CPU microseconds per step of each thing the engine's step does beyond the bare loop's,
    timed alone (best of 7): the row's threshold, the accuracies' ``add`` of the step's outputs, the
    row's lr, setting the next step's lr (the old calls beside them), the metrics row, and the optimizer step over the
    engine's param groups (parametrize.param_groups) less the bare loop's one-group step. Then the bare loop's
    whole step (forward, loss, ``.item()``, backward, update) for scale."""
    from catapult import schedules
    from catapult.engine.records import METRIC_COLUMNS
    from catapult.engine.step import weights_finite
    from catapult.engine.step_accuracy import StepAccuracies
    from catapult.engine.step_lr import StepLRs, StepThresholds
    from catapult.losses import accuracy

    setup = engine.build_run(make_config(case))
    model, loss_fn, optimizer = setup.model, setup.loss_fn, setup.optimizer
    schedule = setup.warmup.schedule
    scheduler = schedules.attach(optimizer, schedule)  # what the loop called before StepLRs
    lrs, thresholds = StepLRs(optimizer, schedule, last=10**6), StepThresholds(optimizer)
    bare_optimizer = _bare_optimizer(setup.config, model)
    x, y = setup.batches.batch(0)
    outputs = model(x).detach()
    loss, accuracies = loss_fn(outputs, y), StepAccuracies()
    parameters = list(model.parameters())
    loss_fn(model(x), y).backward()  # gradients for both optimizers' steps (lr 0 changes nothing)
    for opt in (optimizer, bare_optimizer):
        for group in opt.param_groups:
            group["lr"] = 0.0

    def row():
        r = dict.fromkeys(METRIC_COLUMNS)
        r.update(step=1, lr=float(schedule(1)), threshold=1.0)
        return r

    def bare_step():
        loss = loss_fn(model(x), y)
        loss.item()
        bare_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bare_optimizer.step()

    with torch.no_grad():
        engine_us, bare_us = _best_pair_us(optimizer.step, bare_optimizer.step)
        opt_groups = engine_us - bare_us
    import warnings
    with warnings.catch_warnings():  # scheduler.step() without optimizer.step() warns once
        warnings.simplefilter("ignore")
        sched_us = _best_us(scheduler.step)
    extras = [("thresholds(lr_t, t) (StepThresholds; threshold(optimizer) alone: "
               f"{_best_us(lambda: engine.threshold(optimizer)):.1f})", _best_us(lambda: thresholds(1e-3, 1))),
              (f"accuracies.add(row, loss, outputs, y), with loss.item() (accuracy(outputs, y) alone: "
               f"{_best_us(lambda: accuracy(outputs, y)):.1f})", _best_us(lambda: accuracies.add({}, loss, outputs, y))),
              (f"lrs.at(t) (schedule(t) alone: {_best_us(lambda: float(schedule(1))):.1f})", _best_us(lambda: lrs.at(1))),
              (f"lrs.apply(t + 1) (torch's scheduler.step(): {sched_us:.1f})", _best_us(lambda: lrs.apply(1))),
              ("metrics row", _best_us(row)),
              (NOT_PER_STEP, _best_us(lambda: weights_finite(parameters))),
              (f"optimizer.step(): {len(optimizer.param_groups)} groups - 1 group", opt_groups)]
    extras.append(("bare step (forward, loss, .item(), backward, update)", _best_us(bare_step, repeat=5, number=10)))
    return extras


#: Timed beside the extras but paid only at the steps that evaluate the test set (engine.loop),
#: so left out of their per-step sum.
NOT_PER_STEP = "weights_finite(parameters), at test steps only (not summed)"


def in_loop_extras(case: str, reps: int = 3, steps: int = 200,
                   probes: dict | None = None) -> list[tuple[str, float, float, float]]:
    """CPU microseconds per step of each of the engine's per-step extras timed *where the loop
    runs it*, cold: a bare loop (forward, loss, ``.item()``, backward, update, on the run's
    batches) with one extra inserted after the loss (``accuracy``, the row) or after the update
    (setting the next lr), its thread CPU time read around that call alone; median over the
    steps, then median and max over ``reps`` loops, and the mean over the steps (median over the
    loops: it holds what a call does once in many steps, e.g. the accuracies' count of a chunk of
    steps, and a loaded host's bursts). An empty insertion (the clock's own cost) is subtracted. Alone and hot, as ``--extras`` times them, these calls cost 5-10x less: inside a
    step of large kernels their code and data are out of the caches (RESULTS, "Engine overhead").
    Rows: the engine's calls, then the ones they replaced (``old:``). ``probes``: other calls to
    time the same way, ``{name: ("loss" or "update", fn(context))}`` (context: ``t``, ``outputs``,
    ``y``, ``loss``, ``optimizer``, ``lrs``, ``thresholds``, ``row``, ...)."""
    import warnings

    from catapult import schedules
    from catapult.engine.records import METRIC_COLUMNS
    import tempfile

    from catapult.engine.records import MetricsFile
    from catapult.engine.step import diverged, evaluates_test, measures_sharpness, new_row
    from catapult.engine.step_accuracy import StepAccuracies
    from catapult.engine.step_lr import StepLRs, StepThresholds
    from catapult.losses import loss_and_accuracy

    clock = time.thread_time_ns
    config = make_config(case, steps)
    reporter, rows = Progress("none", steps, "x"), []
    folder = tempfile.TemporaryDirectory()
    metrics_file = MetricsFile(os.path.join(folder.name, "metrics.csv"))

    def after_loss(fn):
        return ("loss", fn)

    def after_update(fn):
        return ("update", fn)

    extras = {
        "nothing (the clock; subtracted)": after_loss(lambda c: None),
        "accuracies.add(row, loss, outputs, y) (with the loss.item() the bare loop has too)": after_loss(
            lambda c: c["accuracies"].add(dict(c["row"]), c["loss"], c["outputs"], c["y"])),
        "row: lrs.at(t), thresholds(lr_t, t), new_row": after_loss(
            lambda c: new_row(c["t"], c["lrs"].at(c["t"]), c["thresholds"](c["lrs"].at(c["t"]), c["t"]))),
        "rules: diverged, evaluates_test x2, measures_sharpness": after_loss(
            lambda c: (diverged(0.5, 1.0, math.inf), evaluates_test(c["t"], 0, steps),
                       evaluates_test(c["t"], 0, steps), measures_sharpness(c["t"], 0, steps))),
        "progress update, metrics.append": after_loss(lambda c: (reporter.update(c["row"]), rows.append(c["row"]))),
        "metrics_file.write(row) (catapult train's out dir)": after_loss(lambda c: metrics_file.write(dict(c["row"]))),
        "lrs.apply(t + 1)": after_update(lambda c: c["lrs"].apply(c["t"] + 1)),
        "old: loss_and_accuracy(loss, outputs, y) (stop 54)": after_loss(
            lambda c: loss_and_accuracy(c["loss"], c["outputs"], c["y"])),
        "old: metrics_file.write formatting the row (stop 54)": after_loss(
            lambda c: _formatted_write(metrics_file, dict(c["row"]))),
        "old: threshold(optimizer, step=t)": after_loss(lambda c: engine.threshold(c["optimizer"], step=c["t"])),
        "old: accuracy's general path (2 no_grad, 9 ops)": after_loss(
            lambda c: (c["loss"].item(), _general_accuracy(c["outputs"], c["y"]))),
        "old: schedule(t)": after_loss(lambda c: float(c["schedule"](c["t"]))),
        "old: torch's scheduler.step()": after_update(lambda c: c["scheduler"].step()),
    }
    if probes is not None:
        extras = {"nothing (the clock; subtracted)": extras["nothing (the clock; subtracted)"], **probes}

    def one_loop(where: str, fn) -> float:
        setup = engine.build_run(config)
        model, loss_fn, optimizer, batches = setup.model, setup.loss_fn, setup.optimizer, setup.batches
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            context = {"optimizer": optimizer, "schedule": setup.warmup.schedule,
                       "scheduler": schedules.attach(optimizer, setup.warmup.schedule),
                       "lrs": StepLRs(optimizer, setup.warmup.schedule, last=steps),
                       "thresholds": StepThresholds(optimizer), "row": dict.fromkeys(METRIC_COLUMNS),
                       "accuracies": StepAccuracies()}
        context["row"].update(step=0, lr=1e-3, threshold=1.0, train_loss=1.0, train_accuracy=0.5)
        times = []
        for t in range(steps):
            x, y = batches.batch(t)
            outputs = model(x)
            loss = loss_fn(outputs, y)
            context.update(t=t, outputs=outputs, y=y, loss=loss)
            if where == "loss":
                c0 = clock()
                fn(context)
                times.append(clock() - c0)
            loss.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            context.update(outputs=None, loss=None)
            del loss, outputs
            optimizer.step()
            if where == "update":
                c0 = clock()
                fn(context)
                times.append(clock() - c0)
        return statistics.median(times[5:]) / 1e3, statistics.mean(times[5:]) / 1e3

    try:
        for where, fn in extras.values():  # warm-up
            one_loop(where, fn)
        per_rep = {name: [] for name in extras}
        for rep in range(reps):
            for name in (list(extras) if rep % 2 == 0 else list(reversed(extras))):
                per_rep[name].append(one_loop(*extras[name]))
    finally:
        metrics_file.close()
        folder.cleanup()
    floor = statistics.median(m for m, _ in per_rep["nothing (the clock; subtracted)"])
    mean_floor = statistics.median(a for _, a in per_rep["nothing (the clock; subtracted)"])
    return [(name, statistics.median(m for m, _ in v) - floor, max(m for m, _ in v) - floor,
             statistics.median(a for _, a in v) - mean_floor) for name, v in per_rep.items()]


def _formatted_write(metrics_file, row) -> None:
    """What ``MetricsFile.write`` did until the rows waited for the flush: the row's cells
    formatted and handed to the csv writer inside the step."""
    from catapult.writing import csv_cell, write_errors_named

    metrics_file.write(row)  # the cadence's clock and the list (flushes as the file does)
    with write_errors_named(metrics_file.path):
        metrics_file.writer.writerow([csv_cell(row.get(c)) for c in metrics_file.columns])


def _general_accuracy(outputs, y):
    """``losses.accuracy``'s general path (what every call took before the classifier fast path)."""
    from catapult.losses import _accuracy

    return _accuracy(outputs, y)


def profile_engine(config: dict, top: int = 25) -> None:
    """cProfile of one ``engine.run`` (cumulative time, the ``top`` largest entries)."""
    engine.run(config, progress="none")  # warm
    prof = cProfile.Profile()
    prof.enable()
    engine.run(config, progress="none")
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def bench_case(case: str, reps: int, steps: int | None, write: bool = False) -> dict:
    """Alternating repetitions of the engine and both bare loops on ``case``; per-repetition
    ratios of the whole run's and of the median step's wall and CPU time (module docstring).
    ``write``: the engine writes a run directory (:func:`time_engine`)."""
    config = make_config(case, steps)
    runners = {"engine": lambda: time_engine(config, write),
               "bare+item": lambda: time_bare(config, item=True),
               "bare": lambda: time_bare(config, item=False)}
    for run in runners.values():  # warm-up: first-call costs outside the timings
        run()
    n_steps = config["train"]["steps"]
    # seconds per step, per runner, measure ("run": whole run / steps; "step": median step) and clock
    per_step = {(k, m, c): [] for k in runners for m in ("run", "step") for c in ("wall", "cpu")}
    losses = {}
    for rep in range(reps):
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for name in order:
            run_s, step_s, losses[name] = runners[name]()
            for i, clock in enumerate(("wall", "cpu")):
                per_step[name, "run", clock].append(run_s[i] / n_steps)
                per_step[name, "step", clock].append(step_s[i])
        print(f"  {case} rep {rep}: " + ", ".join(
            f"{k} run {1e3 * per_step[k, 'run', 'wall'][-1]:.3f} ms/step "
            f"(cpu {1e3 * per_step[k, 'run', 'cpu'][-1]:.3f}) "
            f"median step {1e3 * per_step[k, 'step', 'wall'][-1]:.3f} (cpu {1e3 * per_step[k, 'step', 'cpu'][-1]:.3f})"
            for k in runners), flush=True)
    ref = losses["engine"]
    for name, value in losses.items():  # the same trajectory, so the same work was timed
        assert math.isclose(value, ref, rel_tol=1e-6), (case, name, value, ref)
    rows = []
    for measure in ("step", "run"):
        for clock in ("wall", "cpu"):
            times = {k: per_step[k, measure, clock] for k in runners}
            row = dict(case=case, steps=n_steps, measure=measure, clock=clock,
                       ms={k: 1e3 * statistics.median(v) for k, v in times.items()},
                       extra_us=1e6 * statistics.median(e - b for e, b in zip(times["engine"], times["bare+item"])))
            for base in ("bare+item", "bare"):
                ratios = [e / b for e, b in zip(times["engine"], times[base])]
                row[base] = (statistics.median(ratios), min(ratios), max(ratios))
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--steps", type=int, default=None, help="override every case's step count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 reps of 30 steps")
    parser.add_argument("--profile", choices=list(CASES), help="print a cProfile of the engine on this case")
    parser.add_argument("--in-loop", action="store_true",
                        help="only time the engine's per-step extras inside a bare loop's steps (see in_loop_extras)")
    parser.add_argument("--write", action="store_true",
                        help="the engine writes a run directory (metrics.csv at every step), as catapult train --out does")
    parser.add_argument("--extras", action="store_true",
                        help="only time the engine's per-step extras alone (see engine_extras)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.reps, args.steps = 2, 30
    if args.profile:
        profile_engine(make_config(args.profile, args.steps))
        return 0
    if args.in_loop:
        for case in args.cases:
            print(f"\n{case}: CPU us per step of each extra inside a bare loop's step (median over steps: "
                  f"median and max of {args.reps} loops; mean over steps: median of the loops; load "
                  f"{os.getloadavg()[0]:.2f})\n\n| extra | us | max | mean |\n|---|---|---|---|")
            for name, us, top, mean in in_loop_extras(case, reps=args.reps, steps=args.steps or 200):
                print(f"| {name} | {us:.1f} | {top:.1f} | {mean:.1f} |")
        return 0
    if args.extras:
        for case in args.cases:
            extras = engine_extras(case)
            step = extras[-1][1]
            print(f"\n{case}: CPU us per step (best of 7; the optimizer steps best of 15, alternating), "
                  "share of the bare step\n\n| item | us | % of bare step |"
                  "\n|---|---|---|")
            for name, us in extras:
                print(f"| {name} | {us:.1f} | {100 * us / step:.2f}% |")
            total = sum(us for name, us in extras[:-1] if name != NOT_PER_STEP)
            print(f"| sum of the engine's extras | {total:.1f} | {100 * total / step:.2f}% |")
        return 0
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    rows = [row for case in args.cases for row in bench_case(case, args.reps, args.steps, args.write)]
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s; {args.reps} repetitions; ratio = median "
          "(min-max) of the per-repetition engine/bare ratios; ms = median over repetitions; measure 'step' = "
          "median step of a run, 'run' = whole run (less set-up) / steps\n")
    print("| case | measure | clock | steps | engine ms/step | bare+item ms/step | bare ms/step | engine / bare+item "
          "| engine / bare | engine - bare+item, us/step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = (lambda base: "{:.3f} ({:.3f}-{:.3f})".format(*r[base]))
        print(f"| {r['case']} | {r['measure']} | {r['clock']} | {r['steps']} | {r['ms']['engine']:.3f} | "
              f"{r['ms']['bare+item']:.3f} | {r['ms']['bare']:.3f} | {ratio('bare+item')} | {ratio('bare')} | "
              f"{r['extra_us']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
