"""Two runs given one run directory at once: both passed the directory check before either
wrote, then wrote into each other's files (one run's metrics.csv beside the other's summary and
weights, both exit 0). A run now claims its folder (a ``flock``) before it removes or writes
anything, and the second is refused with the files of the first left as they were."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from catapult import engine
from catapult.engine import loop
from catapult.engine.loop import RunDirectoryError, claim_run_directory
from catapult.engine.records import METRIC_COLUMNS

fcntl = pytest.importorskip("fcntl")

HEADER = ",".join(METRIC_COLUMNS) + "\r\n"  # a run's records, as its first flush leaves them


def _config(steps=2, seed=0):
    return {"name": "claim", "seed": seed, "data": {"name": "digits", "n_train": 32, "n_test": 16},
            "model": {"width": 8, "depth": 2}, "train": {"steps": steps},
            "eval": {"sharpness_every": 0, "test_every": 0}}


def _tree(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _meanwhile(monkeypatch, action):
    """Run ``action()`` after this run's directory check, while it is being built (the window in
    which another process may start writing there)."""
    build = loop.build_run

    def build_then_act(config, **kwargs):   # (trains=True: run() counts the training state)
        setup = build(config, **kwargs)
        action()
        return setup

    monkeypatch.setattr(loop, "build_run", build_then_act)


def test_a_run_into_a_folder_another_run_is_writing_is_refused_and_touches_nothing(tmp_path, monkeypatch):
    out = tmp_path / "run"
    held = []

    def other_run_starts():  # another process claimed the folder and wrote its first files
        held.append(claim_run_directory(out))
        (out / "metrics.csv").write_text(HEADER)
        (out / "config.yaml").write_text("name: other\n")

    _meanwhile(monkeypatch, other_run_starts)
    try:
        before = None
        with pytest.raises(RunDirectoryError, match="another process is writing a run into"):
            try:
                engine.run(_config(), out_dir=out, progress="none")
            finally:
                before = _tree(out)
        assert before == {"config.yaml": hashlib.sha256(b"name: other\n").hexdigest(),
                          "metrics.csv": hashlib.sha256(HEADER.encode()).hexdigest()}
    finally:
        for claim in held:
            claim.release()
    monkeypatch.undo()
    # released: the folder is free again (and, holding a run's records, may be overwritten)
    result = engine.run(_config(), out_dir=out, progress="none", overwrite=True)
    assert result.status == "finished" and (out / "summary.json").exists()


def test_a_run_that_finished_there_since_the_check_is_not_overwritten_without_overwrite(tmp_path, monkeypatch):
    finished = tmp_path / "finished"
    engine.run(_config(seed=1), out_dir=finished, progress="none")
    out = tmp_path / "run"
    _meanwhile(monkeypatch, lambda: shutil.copytree(finished, out))
    with pytest.raises(RunDirectoryError, match="already exists and is not empty"):
        engine.run(_config(seed=2), out_dir=out, progress="none")
    assert _tree(out) == _tree(finished)  # the other run's files, every byte, and the folder kept


def test_the_claim_is_released_after_a_run_and_after_a_failed_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    engine.run(_config(), out_dir=out, progress="none")
    claim_run_directory(out).release()  # free again after a finished run
    engine.train(engine.build_run(_config()), out / "direct")  # train() called directly releases its own
    claim_run_directory(out / "direct").release()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop, "_save_weights", full_disk)  # fails after the claim, while writing model.pt
    with pytest.raises(OSError, match="No space"):
        engine.run(_config(), out_dir=tmp_path / "bad", progress="none")
    assert not (tmp_path / "bad").exists()  # what the failed run created is gone, and its claim with it
    claim_run_directory(tmp_path / "bad").release()


def test_two_processes_training_into_one_new_folder_leave_one_whole_run(tmp_path):
    """The reported symptom, end to end: two ``catapult train --out same`` started together."""
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent("""\
        name: claim
        data: {name: digits, n_train: 32, n_test: 16}
        model: {width: 8, depth: 2}
        eval: {sharpness_every: 0, test_every: 0}
        """))
    out = tmp_path / "run"
    runs = [subprocess.Popen([sys.executable, "-m", "catapult", "train", str(config), "--out", str(out),
                              "--progress", "none", f"train.steps={steps}", f"seed={seed}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for steps, seed in ((300, 1), (1500, 2))]
    # communicate drains both pipes while waiting (a full pipe would stall a run); 900 s: the
    # longer run took 72 s alone and outlived 300 s on a host at load 15 (torch 2.2.2's suite)
    errors = [p.communicate(timeout=900)[1] for p in runs]
    codes = [p.returncode for p in runs]
    # one writes; the other is refused: the folder is locked, or (once the first has finished)
    # holds a run and --overwrite was not given. Both exited 0 before, each over the other's files.
    assert sorted(codes) == [0, 2], errors
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "metrics.csv").read_text().splitlines()
    # every file is the one run's: its rows, its config, the digest its summary records
    assert len(rows) == summary["steps"] + 2
    assert f"seed: {1 if summary['steps'] == 300 else 2}" in (out / "config.yaml").read_text()
    digest = "sha256:" + hashlib.sha256((out / "metrics.csv").read_bytes()).hexdigest()
    assert summary["written"]["metrics.csv"] == digest
    assert "another process is writing a run into" in errors[codes.index(2)] or \
        "already exists and is not empty" in errors[codes.index(2)]


def test_a_file_system_without_flock_trains_unlocked_rather_than_refusing(tmp_path, monkeypatch):
    import os
    import stat

    flock = fcntl.flock

    def no_locks_on_folders(fd, operation):  # ENOLCK, as some network mounts answer
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(37, "No locks available")
        return flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", no_locks_on_folders)
    result = engine.run(_config(), out_dir=tmp_path / "run", progress="none")
    assert result.status == "finished" and (tmp_path / "run" / "summary.json").exists()


def test_a_folder_that_may_be_written_but_not_read_trains_unlocked(tmp_path, monkeypatch):
    """Mode 0o300 (root ignores it, so the refusal is simulated): write_whole works there through
    O_PATH; the claim's read-only descriptor cannot be had, and the run goes on unlocked."""
    import os

    opener = os.open

    def unreadable_folders(path, flags, *args, **kwargs):
        if "dir_fd" not in kwargs and os.path.isdir(path) and not flags & getattr(os, "O_PATH", 0):
            raise PermissionError(13, "Permission denied", str(path))
        return opener(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", unreadable_folders)
    result = engine.run(_config(), out_dir=tmp_path / "run", progress="none")
    assert result.status == "finished" and (tmp_path / "run" / "summary.json").exists()


def test_a_users_folder_is_refused_naming_three_of_its_files_and_how_many_more(tmp_path):
    from catapult.engine.run_dir import check_out_dir

    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (tmp_path / name).write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"it holds a\.txt, b\.txt, c\.txt and 1 more, but not a run's"):
        check_out_dir(tmp_path, overwrite=True)
    (tmp_path / "d.txt").unlink()
    with pytest.raises(RunDirectoryError, match=r"it holds a\.txt, b\.txt, c\.txt, but not a run's"):
        check_out_dir(tmp_path, overwrite=True)


def test_a_folder_holding_one_file_is_refused_without_overwrite(tmp_path):
    from catapult.engine.run_dir import check_out_dir

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="already exists and is not empty"):
        check_out_dir(tmp_path, overwrite=False)
    (tmp_path / "notes.txt").unlink()
    assert check_out_dir(tmp_path, overwrite=False) == tmp_path   # empty: usable


def test_a_folder_in_place_of_a_run_file_is_named_as_not_a_plain_file(tmp_path):
    # not a symbolic link, but not a file the run could replace either: refused before any
    # contents are judged, naming what it is (not "not a file a catapult run wrote"), and kept
    from catapult.engine.run_dir import check_out_dir

    name = "model.pt"
    out = tmp_path / "run"
    engine.run(_config(steps=1), out_dir=out, progress="none")
    (out / name).unlink()
    (out / name).mkdir()
    (out / name / "mine.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=rf"it holds {name} \(not a plain file\)"):
        check_out_dir(out, overwrite=True)
    assert (out / name / "mine.txt").read_text() == "mine"


def test_a_link_to_nowhere_is_named_as_such(tmp_path):
    # it was "runs/x exists and is not a directory": the user saw no file there
    from catapult.engine.run_dir import check_out_dir

    link = tmp_path / "x"
    link.symlink_to(tmp_path / "scratch" / "x")
    with pytest.raises(RunDirectoryError, match=r"x is a link to .*scratch/x, which does not exist; create that folder"):
        check_out_dir(link)
    assert link.is_symlink() and not (tmp_path / "scratch").exists()
