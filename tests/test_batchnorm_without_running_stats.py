"""A BatchNorm built with ``track_running_stats=False`` normalises by the batch's statistics in
eval mode too: micro-batches and shards must refuse it naming the module (they blamed the loss
function, "neither a mean nor a sum over samples", and told the user to call ``model.eval()``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dense_curvature import dense_hessian

import catapult
from catapult.curvature.distributed import single_process_group


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.Tanh(),
                          nn.Linear(6, 3)).double().eval()
    return model, (torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,)))


def test_whole_batch_sharpness_is_the_batch_statistics_hessian():
    model, batch = problem()
    truth = np.linalg.eigvalsh(dense_hessian(model, F.cross_entropy, batch).numpy())[-1]
    assert catapult.sharpness(model, F.cross_entropy, batch, tol=1e-8).value == pytest.approx(truth, rel=1e-7)


@pytest.mark.parametrize("options, option", [({"chunk_size": 4}, "chunk_size"),
                                             ({"memory": "lean"}, "memory='lean'")])
def test_micro_batches_refuse_it_naming_the_module(options, option, lean_chunks_small_batches):
    model, batch = problem()   # (lean: micro-batches by its relative rule; whole, 12 samples are one chunk)
    with pytest.raises(ValueError, match=r"module '1' is a BatchNorm without running statistics "
                                         r"\(track_running_stats=False\)") as err:
        catapult.sharpness(model, F.cross_entropy, batch, **options)
    assert option in str(err.value) and "model.eval()" not in str(err.value)


def test_distributed_refuses_it_naming_the_module():
    model, batch = problem()
    with single_process_group():
        for call in (lambda: catapult.sharpness(model, F.cross_entropy, batch, distributed=True),
                     lambda: catapult.critical_lr(model, F.cross_entropy, batch,
                                                  torch.optim.SGD(model.parameters(), lr=0.1), distributed=True)):
            with pytest.raises(ValueError, match=r"distributed=True: module '1' is a BatchNorm without running "
                                                 r"statistics .* give it running statistics"):
                call()


def test_distributed_refuses_a_batchnorm_behind_a_dropout():
    """Every module is checked, not only the first that couples the batch (a train-mode Dropout
    ahead of it)."""
    torch.manual_seed(0)
    for bn in (nn.BatchNorm1d(6), nn.BatchNorm1d(6, track_running_stats=False)):
        model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.2), bn, nn.Tanh(), nn.Linear(6, 3)).double()
        model[2].train(True)
        model[1].train(True)
        batch = (torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,)))
        with single_process_group():
            with pytest.raises(ValueError, match=r"distributed=True: module '2' is a BatchNorm"):
                catapult.sharpness(model, F.cross_entropy, batch, distributed=True)
