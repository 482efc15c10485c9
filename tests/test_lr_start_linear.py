"""``schedule.lr_start`` is the critical-lr search's first lr, which a linear warmup never runs: a
start above lr_trgt is refused where a search reads it (catapult, persistent), not in a linear run.
Before, the config check refused it for every warmup once the lr was absolute, so in a sweep over
``schedule.warmup`` at ``c/lambda0`` the linear cell failed (its lr resolved, then checked) while
``catapult train`` of that same cell, whose lr is still ``c/lambda0`` when checked, ran."""
from __future__ import annotations

import yaml

from catapult import config as C
from catapult.cli import main
from catapult.engine import run
from catapult.sweep.store import Store

BASE = {"name": "start", "data": {"name": "digits", "n_train": 64, "n_test": 16}, "model": {"width": 8, "depth": 2},
        "train": {"steps": 3}, "eval": {"sharpness_every": 0, "test_every": 0}}


def test_a_linear_run_takes_an_lr_start_above_its_absolute_lr_and_runs_as_without_it():
    config = {**BASE, "optimizer": {"name": "sgd", "lr": 0.1}, "schedule": {"warmup": "linear", "warmup_steps": 2}}
    with_start = {**config, "schedule": {**config["schedule"], "lr_start": 0.5}}
    C.validate(with_start)
    rows = [[(r["lr"], r["train_loss"]) for r in run(c, progress="none").metrics] for c in (config, with_start)]
    assert rows[0] == rows[1] and [lr for lr, _ in rows[0]] == [0.05, 0.1, 0.1, 0.1]


def test_a_sweep_over_the_warmup_refuses_the_start_only_in_the_cells_that_search(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({**BASE, "optimizer": {"name": "sgd", "lr": "0.5/lambda0"},
                                      "schedule": {"warmup_steps": 2, "lr_start": 10.0},
                                      "sweep": {"grid": {"schedule.warmup": ["linear", "catapult"]}}}))
    store = tmp_path / "s.db"
    assert main(["sweep", str(config), "--store", str(store), "--threads", "1", "--progress", "none"]) == 1
    capsys.readouterr()
    cells = {c["swept"]["schedule.warmup"]: c for c in Store(store, create=False).cells()}
    assert cells["catapult"]["status"] == "failed" and "schedule.lr_start" in cells["catapult"]["error"]
    assert cells["linear"]["status"] == "finished"
