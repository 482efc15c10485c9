"""Two real ``catapult sweep`` processes on one store share the work: every cell is computed by
one of them and recorded exactly once, and when either is killed with ``kill -9`` the other
takes over the cell it was computing and completes the sweep."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
name: shared
data: {name: digits, n_train: 96, n_test: 48}
model: {name: mlp, width: 16, depth: 2, parametrization: sp}
train: {steps: 30}
eval: {sharpness_every: 0, test_every: 30, sharpness_max_iter: 20}
sweep:
  grid:
    optimizer.lr: {log2_over_lambda0: [0, 5]}
    schedule.warmup_steps: [1, 8]
"""
CELLS = 12


def _start(config: Path, store: Path, log: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "catapult", "sweep", str(config), "--store", str(store), "--threads", "1",
           "--progress", "lines", *overrides]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def _rows(store: Path) -> dict[int, tuple]:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT id, status, attempts, worker FROM cells")}
    finally:
        conn.close()


def _holds_a_cell(store: Path, pid: int) -> bool:
    try:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM claims JOIN drivers ON drivers.id = claims.driver "
                                "WHERE drivers.pid = ?", (pid,)).fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return False  # no store (or no claims table) yet


def _finish(procs, logs, timeout=300):
    deadline = time.monotonic() + timeout
    for proc, log in zip(procs, logs):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"sweep did not finish:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_two_drivers_on_one_store_compute_each_cell_once(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    store = tmp_path / "s.db"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start(config, store, logs[0]), _start(config, store, logs[1])]
    try:
        _finish(procs, logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert f"{CELLS} cells:" in log.read_text()
    rows = _rows(store)
    assert len(rows) == CELLS
    assert all(status in ("finished", "diverged") for status, _, _ in rows.values()), rows
    assert all(attempts == 1 for _, attempts, _ in rows.values()), rows  # nobody computed a cell twice
    host = socket.gethostname()
    by = {p.pid: {i for i, (_, _, worker) in rows.items() if worker == f"{host}:{p.pid}"} for p in procs}
    assert set().union(*by.values()) == set(rows)  # every cell recorded by one of the two
    for proc, log in zip(procs, logs):  # and each reports the cells it ran, no others
        reported = {int(line.split()[2]) for line in log.read_text().splitlines()
                    if line.startswith("[shared] cell ")}
        assert reported == by[proc.pid]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_kill_9_of_either_driver_and_the_other_completes_the_sweep(tmp_path, victim):
    config = tmp_path / "sweep.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    store = tmp_path / "s.db"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # 400 steps a cell (~1 s): with 30, the first driver once ran all 12 cells before the second
    # had started and claimed one (a clean-clone CI run on a quiet host, 2026-12-02)
    procs = [_start(config, store, logs[0], "train.steps=400")]
    time.sleep(0.5)
    procs.append(_start(config, store, logs[1], "train.steps=400"))
    killed, survivor = procs[victim], procs[1 - victim]
    try:
        deadline = time.monotonic() + 180
        while not _holds_a_cell(store, killed.pid):
            assert killed.poll() is None, logs[victim].read_text()
            assert time.monotonic() < deadline, "the driver never claimed a cell"
            time.sleep(0.02)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        _finish([survivor], [logs[1 - victim]])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert killed.returncode == -signal.SIGKILL
    assert survivor.returncode == 0, logs[1 - victim].read_text()[-3000:]
    rows = _rows(store)
    assert all(status in ("finished", "diverged") for status, _, _ in rows.values()), rows
    host = socket.gethostname()
    redone = {i: row for i, row in rows.items() if row[1] != 1}
    # at most the one cell the killed driver was computing ran twice, finished by the survivor
    assert len(redone) <= 1, rows
    assert all(attempts == 2 and worker == f"{host}:{survivor.pid}" for _, attempts, worker in redone.values())
    assert all(worker in (f"{host}:{killed.pid}", f"{host}:{survivor.pid}") for _, _, worker in rows.values())
