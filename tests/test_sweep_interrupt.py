"""Ctrl-C of a real ``catapult sweep``: the message gives the exact command that resumes it,
``export`` shows the cell that was cut off as ``interrupted``, and the command resumes."""
from __future__ import annotations

import csv
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from catapult.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
name: ctrlc
data: {name: digits, n_train: 96, n_test: 48}
model: {name: mlp, width: 16, depth: 2, parametrization: sp}
train: {steps: 30}
eval: {sharpness_every: 0, test_every: 30, sharpness_max_iter: 20}
sweep:
  grid:
    optimizer.lr: {log2_over_lambda0: [0, 2]}
    schedule.warmup_steps: [1, 8]
"""


def _catapult(*words: str) -> list[str]:
    return [sys.executable, "-m", "catapult", *words]


def _deliverable_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_state(pid: int) -> str:
    """The process's blocked / ignored / caught signal masks, for the failure message."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "(no /proc status)"
    return " ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def _running(store: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def _cells(store: Path) -> list:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT id, status, substr(error, -400) FROM cells").fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_export_shows_interrupted(tmp_path, capsys, single_thread):
    config = tmp_path / "sweep.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    store = tmp_path / "my store.db"  # a space: the printed command must quote it
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # 400 steps a cell (~0.5 s): the SIGINT lands inside a running cell, not in the sweep's last
    # moments, even on a loaded host
    cmd = _catapult("sweep", str(config), "--store", str(store), "--threads", "1", "--progress", "none",
                    "train.steps=400")
    # the child gets SIGINT as a terminal's Ctrl-C would deliver it: unblocked and with its default
    # disposition, whatever earlier tests in this pytest process left behind (a blocked or ignored
    # SIGINT is inherited through fork and exec). In 2 of 3 full-suite runs on 2026-12-02 the sweep
    # ran to its end after the SIGINT and exited 0, with nothing on stderr; alone it always passed.
    # The child's signal masks go into the failure message, should it happen again.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_deliverable_sigint)
    try:
        deadline = time.monotonic() + 120
        while not _running(store):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        state = _signal_state(proc.pid)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # 130 as a shell reports it: exit(130), or death by the SIGINT itself (-2, which a shell also
    # shows as 130). One full-suite run ended with -2 after printing the message below; why the
    # handled interrupt still ended by the signal there is not known (see the issue note).
    # should it exit 0 again: its summary line and each cell's status and error say where the
    # interrupt went (a cell that recorded it as its failure, or a sweep that had already ended)
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err, out, state, _cells(store))
    assert "Traceback" not in err
    resume = err.split("Resume with:\n", 1)[1].strip().splitlines()[0].strip()
    expected = shlex.join(["catapult", "sweep", str(config), "--store", str(store), "--threads", "1",
                           "--progress", "none", "train.steps=400"])
    assert resume == expected

    # export and the printed command, in this process: what is tested is the store the interrupt
    # left and the words of the command, not a process of their own (each subprocess cost a torch
    # import, ~7 s of CPU); the command's --threads 1 is undone by the single_thread fixture
    out = tmp_path / "cells.csv"
    capsys.readouterr()
    code = main(["export", str(store), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    statuses = [row["status"] for row in csv.DictReader(out.open())]
    assert statuses.count("interrupted") == 1 and "running" not in statuses, statuses

    words = shlex.split(resume)
    capsys.readouterr()
    code = main(words[1:])
    done = capsys.readouterr()
    assert code == 0, done.err
    assert "6 cells:" in done.out and "resumed" in done.out


def test_resume_command_of_a_piped_config_asks_for_the_config_again(tmp_path):
    # `catapult sweep /dev/stdin < run.yaml` or `<(...)`: the resume line printed the pipe's path as
    # the config, a command that waited on the terminal (/dev/stdin) or found no file (/dev/fd/63)
    import argparse

    from catapult.cli.sweep import resume_command

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    gone = tmp_path / "fd" / "63"   # a `<(...)` descriptor, closed by the time the line is printed
    plain = tmp_path / "run.yaml"
    plain.write_text("{}\n")
    store = tmp_path / "s.db"
    for config in (fifo, gone):
        args = argparse.Namespace(config=str(config), overrides=["train.steps=9"], threads=1)
        command, note = resume_command(args, store).split("\n")
        assert shlex.split(command) == ["catapult", "sweep", "CONFIG", "--store", str(store), "--threads", "1",
                                        "train.steps=9"]
        assert note.strip().startswith(f"(CONFIG: the config read from {config}, a pipe"), note
    args = argparse.Namespace(config=str(plain), overrides=[])
    assert resume_command(args, store) == shlex.join(["catapult", "sweep", str(plain), "--store", str(store)])
