"""The batched loop shared by both engines (:mod:`catapult.sweep.batched_loop`): a member whose
``c/lambda0`` learning rate cannot resolve is recorded failed with a message, and the others train
exactly as they do without it."""
from __future__ import annotations

import pytest
import torch

from catapult import config as cfg
from catapult.sweep.batched import run_group
from catapult.sweep.ensemble_run import run_ensemble
from catapult.sweep.executors import Cell
from catapult.sweep.member import Member

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = {"data": {"name": "digits", "n_train": 64, "n_test": 32}, "dtype": "float64",
        "model": {"name": "mlp", "width": 16, "depth": 3}, "train": {"steps": 5},
        "eval": {"sharpness_every": 2, "test_every": 2, "sharpness_max_iter": 30}}


def _cells(ids):
    return [Cell(i, cfg.validate({**BASE, "name": f"c{i}", "seed": i,
                                  "optimizer": {"name": "sgd", "lr": f"{1 + i}/lambda0"}})) for i in ids]


@pytest.mark.parametrize("engine", [run_ensemble, run_group], ids=["kernels", "func"])
def test_member_whose_lr_target_cannot_resolve_fails_alone(engine, monkeypatch):
    measure = Member.measure_lambda0

    def measure_then_spoil(members, *args):
        measure(members, *args)
        for mb in members:
            if mb.cell.id == 1:  # as a Hessian with no positive curvature would give
                mb.lambda_0 = 0.0

    monkeypatch.setattr(Member, "measure_lambda0", staticmethod(measure_then_spoil))
    results = dict(engine(_cells([0, 1, 2])))
    monkeypatch.setattr(Member, "measure_lambda0", staticmethod(measure))
    alone = dict(engine(_cells([0, 2])))

    failed = results[1]
    assert failed.status == "failed" and failed.metrics == []
    assert "optimizer.lr='2/lambda0'" in failed.error and "positive finite lambda_0" in failed.error
    for i in (0, 2):
        assert results[i].status == "finished"
        assert len(results[i].metrics) == BASE["train"]["steps"] + 1
        for a, b in zip(results[i].metrics, alone[i].metrics):
            for key, value in a.items():
                assert value == b[key] if value is None else value == pytest.approx(b[key], rel=1e-12), (a["step"], key)
        assert results[i].summary["lr_target"] == pytest.approx(alone[i].summary["lr_target"], rel=1e-12)
