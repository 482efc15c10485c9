"""The tests' dense truth (``dense_curvature``) promises to leave the model as it was; on a
float64 model with a train-mode BatchNorm it wrote the running statistics (its own buffers went
into ``functional_call``), so a test that snapshots the model before taking the truth would
blame the library for the change."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from dense_curvature import dense_ggn, dense_gradient, dense_hessian


def test_dense_truth_leaves_a_float64_batchnorm_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    batch = (torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,)))
    before = copy.deepcopy(model.state_dict())
    for truth in (dense_hessian, dense_gradient, dense_ggn):
        truth(model, F.cross_entropy, batch)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), truth.__name__
