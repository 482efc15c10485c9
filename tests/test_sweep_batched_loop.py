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

    def measure_then_spoil(members, *args, **kwargs):
        measure(members, *args, **kwargs)
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
                assert value == b[key] if value is None else value == pytest.approx(b[key], rel=1e-12, abs=0), (a["step"], key)
        assert results[i].summary["lr_target"] == pytest.approx(alone[i].summary["lr_target"], rel=1e-12, abs=0)


# ---- the torch.func engine's memory model (catapult.sweep.batched_memory)

MEM = {"data": {"name": "digits", "n_train": 40, "n_test": 10},
       "model": {"name": "mlp", "width": 12, "depth": 3}, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
       "train": {"batch_size": 20}, "eval": {"sharpness_every": 5}}


def _mem_config(**over):
    return cfg.validate({**MEM, **over})


def test_saved_activations_of_an_mlp_by_hand():
    # depth 3, width w, batch B, C classes, MSE: autograd keeps each hidden activation once (the
    # ReLU's output is the next layer's input) and the output's residual for the square: the
    # batch, weights and biases are not counted
    from catapult import engine
    from catapult.losses import get_loss
    from catapult.sweep.batched_memory import saved_activation_elements

    config = _mem_config()
    data = engine.load_data(config)
    model = engine.build_model(config, data.in_features, data.num_classes)
    B, w, C = 20, 12, data.num_classes
    x, y = data.x_train[:B], data.y_train[:B]
    assert saved_activation_elements(model, get_loss("mse"), x, y) == 2 * B * w + B * C


def test_func_chunk_members_against_a_hand_computation(monkeypatch):
    from catapult import engine
    from catapult.sweep import ensemble
    from catapult.sweep.batched_memory import CUDA_FRACTION, chunk_members, memory_budget

    config = _mem_config()
    data = engine.load_data(config)
    B, w, C, D = 20, 12, data.num_classes, data.in_features
    P = (D * w + w) + (w * w + w) + (w * C + C)
    A = 2 * B * w + B * C
    # float32; SGD with momentum: 1 state tensor; sharpness measured with the default 20-vector basis
    per = 4 * (P * (3 + 2 * 1) + 2 * A) + 4 * (P * (20 + 7) + 3 * A)
    assert chunk_members(config, data, 10 * per + 5) == (10, per)
    assert chunk_members(config, data, per - 1) == (1, per)  # at least one member
    # micro-batched HVPs (chunk_size 5 of 20 samples) keep a quarter of the HVP's activations
    chunked = _mem_config(eval={"sharpness_every": 5, "sharpness_chunk_size": 5})
    assert chunk_members(chunked, data, 10**9)[1] == per - 4 * 3 * A + int(4 * 3 * A / 4)
    # budgets: a fraction of the RAM on the CPU, the free memory (with headroom) on CUDA
    assert memory_budget("cpu", 0.25, total_ram=64 * 2**30) == 16 * 2**30
    assert memory_budget("cuda", 0.25, cuda_free=10 * 2**30) == int(10 * 2**30 * CUDA_FRACTION)
    with pytest.raises(ValueError, match="fraction"):
        memory_budget("cpu", 0.0)
    # the executor cuts a group into chunks of that many members (per worker)
    monkeypatch.setattr(ensemble, "memory_budget", lambda device, fraction: 3 * per + 1)
    cells = [Cell(i, cfg.validate({**MEM, "name": f"c{i}", "optimizer": {"name": "sgd", "lr": 0.01 * (1 + i),
                                                                          "momentum": 0.9}}))
             for i in range(7)]
    chunks, local = ensemble.EnsembleExecutor(kernels=False).plan(cells)
    assert local == [] and [len(c) for _, c in chunks] == [3, 3, 1]
    chunks, _ = ensemble.EnsembleExecutor(kernels=False, max_members=2).plan(cells)
    assert [len(c) for _, c in chunks] == [2, 2, 2, 1]


# ---- any architecture: a conv net with BatchNorm through the torch.func engine

class _TinyConv(torch.nn.Module):
    """Conv -> BatchNorm -> ReLU -> pool -> linear on 8 x 8 digits: nothing MLP- or GPT-like."""

    def __init__(self, out_features: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4 * 4 * 4, out_features)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x.reshape(-1, 1, 8, 8))))
        return self.head(torch.nn.functional.avg_pool2d(h, 2).flatten(1))


def test_conv_net_with_batchnorm_equals_local(monkeypatch):
    from catapult.sweep.batched_memory import chunk_members

    # BatchNorm's running statistics are per-member buffers updated by every training forward;
    # the test loss (eval mode) reads them, so equal test losses show they were kept per member
    from catapult import engine

    monkeypatch.setitem(engine.MODELS, "mlp", lambda model, n_in, n_out: _TinyConv(n_out))
    base = {**BASE, "train": {"steps": 4, "batch_size": 16}}
    cells = [Cell(i, cfg.validate({**base, "name": f"c{i}", "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.5}}))
             for i, lr in enumerate([0.3, 0.1])]
    results = dict(run_group(cells))
    for cell in cells:
        local = engine.run(cell.config, progress="none")
        assert results[cell.id].status == local.status == "finished"
        for a, b in zip(local.metrics, results[cell.id].metrics):
            for key in ("train_loss", "sharpness", "test_loss", "test_accuracy"):
                assert (a[key] is None and b[key] is None) or b[key] == pytest.approx(a[key], rel=1e-9), key
    assert any(row["test_loss"] is not None for row in results[0].metrics)
    data = engine.load_data(cells[0].config)
    assert chunk_members(cells[0].config, data, 2**30)[0] >= 1  # the memory model measures it too


def test_member_groups_of_the_test_pass_follow_the_widest_activation():
    # the conv net's widest activation per sample is the conv output, 4 channels x 8 x 8 = 256
    # elements (wider than any parameter dimension): groups of members are sized by it
    from catapult.losses import get_loss
    from catapult.sweep.batched_model import StackedModel

    stacked = StackedModel([_TinyConv(10).double() for _ in range(3)], get_loss("mse"))
    x = torch.zeros(50, 64, dtype=torch.float64)
    assert stacked.widest_activation(x) == 4 * 8 * 8
    assert stacked.members_per_pass(x, budget_bytes=2 * 50 * 256 * 8) == 2
    assert stacked.members_per_pass(x, budget_bytes=50 * 256 * 8 - 1) == 1
