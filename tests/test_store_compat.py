"""A store written by the previous version (before the engine redesign) still opens: a file
made by commit 0fc5c89's ``catapult sweep`` (12 cells of the smoke phase diagram, shrunk), read
by today's export and resumed by today's sweep with nothing left to run."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from catapult.cli import main

OLD_STORE = Path(__file__).parent / "data" / "store_v0.1.0.db"
ROOT = Path(__file__).resolve().parents[1]
# The command that wrote the file (run with the old code's `python -m catapult.sweep`).
OVERRIDES = ["sweep.grid.optimizer.lr={log2_over_lambda0: [1, 6]}", "sweep.grid.schedule.warmup_steps=[1, 16]",
             "train.steps=20", "data.n_train=64", "data.n_test=32",
             # that version's divergence rule (today's default is the paper's: a non-finite loss only)
             "train.divergence_factor=1000"]


def _copy(tmp_path: Path) -> Path:
    store = tmp_path / "old.db"
    shutil.copyfile(OLD_STORE, store)  # never touch the fixture itself
    return store


def test_an_old_store_exports(tmp_path, capsys):
    store = _copy(tmp_path)
    out = tmp_path / "cells.csv"
    assert main(["export", str(store), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12
    assert sorted(r["status"] for r in rows) == ["diverged"] * 4 + ["finished"] * 8


def test_an_old_store_resumes_with_nothing_to_run(tmp_path, capsys):
    store = _copy(tmp_path)
    code = main(["sweep", str(ROOT / "configs" / "smoke" / "phase_diagram.yaml"), "--store", str(store),
                 "--threads", "1", "--progress", "none", *OVERRIDES])
    assert code == 0
    out = capsys.readouterr().out
    assert "0 run now, 12 already in the store" in out, out


def test_an_old_store_of_another_sweep_is_refused_and_left_as_it_was(tmp_path, capsys):
    # given by mistake to another sweep, the old store was upgraded in place (application_id,
    # new tables) before the spec check refused it: a file changed by a command that did nothing
    import hashlib

    from catapult.sweep.store_file import identify

    store = _copy(tmp_path)
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    code = main(["sweep", str(ROOT / "configs" / "smoke" / "phase_diagram.yaml"), "--store", str(store),
                 "--threads", "1", "--progress", "none",
                 *[o if o != "train.steps=20" else "train.steps=21" for o in OVERRIDES]])
    assert code == 2
    assert "holds a different sweep" in capsys.readouterr().err
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before and identify(store) == "legacy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.db"]
