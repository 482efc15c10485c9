"""``kill -9`` of a real ``catapult sweep`` process mid-sweep loses nothing that had finished,
and rerunning the same command completes the sweep without recomputing any finished cell."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from catapult.cli import main

CONFIG = """
name: killme
data: {name: digits, n_train: 128, n_test: 64}
model: {name: mlp, width: 32, depth: 3, parametrization: sp}
train: {steps: 60}
eval: {sharpness_every: 0, test_every: 20, sharpness_max_iter: 30}
sweep:
  grid:
    optimizer.lr: {log2_over_lambda0: [2, 6]}   # 2^5 and 2^6 diverge without warmup
    schedule.warmup_steps: [1, 4, 16, 64]
"""
CELLS = 20


def _sweep_cmd(config, store):
    return [sys.executable, "-m", "catapult", "sweep", str(config), "--store", str(store),
            "--threads", "1", "--progress", "lines"]


def _snapshot(store):
    conn = sqlite3.connect(store, timeout=30)
    try:
        cells = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, status, attempts, finished_at, train_loss, test_accuracy FROM cells")}
        metrics = {r[0]: r[1] for r in conn.execute("SELECT cell_id, COUNT(*) FROM metrics GROUP BY cell_id")}
        lam = conn.execute("SELECT key, value, measured_at FROM lambda0").fetchall()
    finally:
        conn.close()
    return cells, metrics, lam


def _count(store, statuses: str) -> int:
    try:
        # read-only: a plain connect would create an empty file, which the sweep refuses as foreign
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute(f"SELECT COUNT(*) FROM cells WHERE status IN ({statuses})").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0  # not created yet


def _done(store):
    return _count(store, "'finished','diverged'")


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume(tmp_path, capsys, single_thread):
    config = tmp_path / "sweep.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    store = tmp_path / "s.db"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_sweep_cmd(config, store), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        # kill inside a cell: after 3 have finished, while the next one is marked running. The
        # process is frozen (SIGSTOP) before the store is read again, so the cell seen running is
        # the one the kill cuts off (a diverging cell can finish between a read and a plain kill:
        # that left no running cell, twice in CI)
        while True:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the sweep made no progress"
            if _done(store) >= 3 and _count(store, "'running'") > 0:
                os.kill(proc.pid, signal.SIGSTOP)
                if _done(store) < CELLS and _count(store, "'running'") > 0:
                    break
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL

    cells, metrics, lam = _snapshot(store)
    finished = {i: row for i, row in cells.items() if row[0] in ("finished", "diverged")}
    assert 3 <= len(finished) < CELLS, "kill -9 should land mid-sweep"
    assert any(row[0] == "running" for row in cells.values())  # the cell that was cut off
    for i, row in finished.items():  # every finished cell is complete: all its step rows are there
        assert row[1] == 1  # attempts
        assert metrics[i] == 61 if row[0] == "finished" else metrics[i] >= 1
    assert len(lam) == 1  # lambda_0 measured once and kept

    # the same command again, in this process (what is tested is the store the kill left, not a
    # second process: a subprocess cost a torch import, ~7 s of CPU); its --threads 1 is undone
    # by the single_thread fixture
    capsys.readouterr()
    code = main(_sweep_cmd(config, store)[3:])
    done = capsys.readouterr()
    assert code == 0, done.err
    assert f"{CELLS} cells:" in done.out and "resumed" in done.out
    after, metrics_after, lam_after = _snapshot(store)
    assert all(row[0] in ("finished", "diverged") for row in after.values())
    assert any(row[0] == "diverged" for row in after.values())
    for i, row in finished.items():  # not recomputed: same attempt, same commit time, same values
        assert after[i] == row and metrics_after[i] == metrics[i]
    for i in set(after) - set(finished):
        assert after[i][1] == (2 if cells[i][0] == "running" else 1)
    assert lam_after == lam  # no new lambda_0 measurement
    assert "measuring lambda_0" not in done.err
