"""Worker processes (:mod:`catapult.sweep.workers`) and ``EnsembleExecutor(workers=k)``: items
stream back as they are yielded, a job that raises or whose process dies is reported (and a
lost job can be submitted again), workers die with a ``kill -9``-ed driver, and an ensemble
sweep on two workers gives the results of one process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from catapult.cli import main
from catapult.sweep.workers import StreamPool


def count_to(arg):
    """Job: yields ``(pid, i)`` for ``i < n``."""
    n = arg
    for i in range(n):
        yield os.getpid(), i


def raise_after_one(arg):
    yield "first"
    raise RuntimeError(f"bad job {arg}")


def die_once(arg):
    """Job: dies (SIGKILL to itself) unless ``marker`` exists; creates it first."""
    marker = Path(arg)
    yield "before"
    if not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    yield "after"


def test_pool_streams_items_of_every_job_on_separate_processes():
    with StreamPool(2) as pool:
        for key in range(4):
            pool.submit(key, count_to, 3 + key)
        items, done = {}, []
        for kind, key, value in pool.events():
            if kind == "item":
                items.setdefault(key, []).append(value)
            else:
                assert kind == "done"
                done.append(key)
    assert sorted(done) == [0, 1, 2, 3]
    assert {k: [i for _, i in v] for k, v in items.items()} == {k: list(range(3 + k)) for k in range(4)}
    pids = {pid for v in items.values() for pid, _ in v}
    assert len(pids) == 2 and os.getpid() not in pids


def test_pool_reports_a_raising_job_and_a_lost_worker_and_runs_a_resubmitted_job(tmp_path):
    marker = tmp_path / "died"
    with StreamPool(1) as pool:
        pool.submit("raise", raise_after_one, 7)
        pool.submit("die", die_once, str(marker))
        events = []
        for kind, key, value in pool.events():
            events.append((kind, key, value if kind == "item" else None))
            if kind == "error":
                assert "RuntimeError: bad job 7" in value
            if kind == "lost":
                assert "killed by signal 9" in value
                pool.submit("again", die_once, str(marker))  # a new process takes it
    assert events == [("item", "raise", "first"), ("error", "raise", None),
                      ("item", "die", "before"), ("lost", "die", None),
                      ("item", "again", "before"), ("item", "again", "after"), ("done", "again", None)]


def test_pool_close_is_idempotent_and_stops_its_processes():
    pool = StreamPool(2)
    pool.submit(0, count_to, 1)
    list(pool.events())
    processes = [w.process for w in pool._workers if w is not None]
    assert processes
    pool.close()
    pool.close()
    assert all(not p.is_alive() for p in processes)


DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from catapult.sweep.workers import StreamPool
from test_sweep_workers import sleep_forever
if __name__ == "__main__":  # spawned workers import this module again
    pool = StreamPool(2)
    pool.submit(0, sleep_forever, None)
    pool.submit(1, sleep_forever, None)
    for kind, key, value in pool.events():
        print(value, flush=True)
"""


def sleep_forever(arg):
    yield os.getpid()
    while True:
        time.sleep(0.1)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_workers_die_with_a_killed_driver(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(proc.stdout.readline()) for _ in range(2)]
        assert all(_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids), "worker processes outlived the driver"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ensemble_on_two_workers_equals_one_process():
    """Same cells, float64, sharpness, a diverging member and a cell the hand-derived kernels
    cannot batch (GI-Adam trains on the torch.func engine, in a worker): the results of
    ``workers=2`` equal ``workers=1``."""
    from catapult import config as cfg
    from catapult.sweep.ensemble import EnsembleExecutor
    from catapult.sweep.executors import Cell
    from test_sweep_ensemble import _assert_same, _sgd_grid

    cells = _sgd_grid("float64")
    gi = cfg.validate({**cells[0].config, "name": "gi", "optimizer": {"name": "gi_adam", "lr": 1e-3}})
    cells.append(Cell(len(cells), gi))
    one = EnsembleExecutor()
    baseline = dict(one.run(cells))
    with EnsembleExecutor(workers=2, threads=1) as two:
        results = {}
        for cell_id, result in two.run(cells):
            assert cell_id not in results
            results[cell_id] = result
        assert len(two.chunks) == 3 and sorted(i for c in two.chunks for i in c) == list(range(len(cells)))
        assert two.engines[len(cells) - 1] == "func" == one.engines[len(cells) - 1]
        assert two.fallbacks == [] == one.fallbacks
        workers = {r.worker for r in results.values()}
    assert len(workers) == 2 and all(w and not w.endswith(f":{os.getpid()}") for w in workers)
    assert {r.status for r in results.values()} >= {"finished", "diverged"}
    for cell in cells:
        _assert_same(baseline[cell.id], results[cell.id], rtol=1e-9)


def test_ensemble_workers_options_are_checked_before_any_work():
    from catapult.sweep.ensemble import EnsembleExecutor

    with pytest.raises(ValueError, match=r"EnsembleExecutor workers must be an integer in \[1, \d+\]; got 0"):
        EnsembleExecutor(workers=0)
    with pytest.raises(ValueError, match="run_fn must be picklable"):
        EnsembleExecutor(run_fn=lambda config, progress="none": None, workers=2)
    EnsembleExecutor(run_fn=lambda config, progress="none": None, workers=1)  # in process: any callable


def test_sweep_cli_with_two_workers(tmp_path, capsys, single_thread):
    config = tmp_path / "s.yaml"
    config.write_text(textwrap.dedent("""
        name: two_workers
        data: {name: digits, n_train: 128, n_test: 64}
        model: {name: mlp, width: 16, depth: 3, parametrization: sp}
        train: {steps: 20}
        eval: {sharpness_every: 0, test_every: 10}
        sweep:
          grid:
            optimizer.lr: [0.05, 0.1, 0.2, 100.0]
            schedule.warmup_steps: [1, 8]
    """))
    # the driver in this process (its two workers are spawned processes either way; a driver
    # process of its own cost a torch import, ~7 s of CPU); single_thread undoes its --threads 1
    cmd = ["sweep", str(config), "--store", str(tmp_path / "s.db"),
           "--executor", "ensemble", "--workers", "2", "--threads", "1", "--progress", "none"]
    capsys.readouterr()
    code = main(cmd)
    done = capsys.readouterr()
    assert code == 0, done.err
    assert "8 cells: 6 finished, 2 diverged, 0 failed" in done.out
    code = main(cmd[:-8] + ["--workers", "2"])
    assert code == 2 and "--workers needs --executor ensemble" in capsys.readouterr().err
