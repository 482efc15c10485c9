"""Mutation pass 12 (StackedModel.padded_count / padded_rows): only a lone member of a model that
pads (a convolutional one) runs beside its copy; an MLP's lone member, and any two or more
members, run as asked (a copy costs a member's memory and time for nothing there)."""
from __future__ import annotations

import torch

from catapult.losses import get_loss
from catapult.models.mlp import MLP
from catapult.sweep.batched_model import StackedModel


def test_only_a_padding_models_lone_member_runs_twice():
    mse = get_loss("mse")
    conv = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    padded, plain = StackedModel([conv, conv], mse), StackedModel([MLP(4, 3, width=8, depth=2)] * 2, mse)
    assert [padded.padded_count(n) for n in (1, 2, 3)] == [2, 2, 3]
    assert [plain.padded_count(n) for n in (1, 2, 3)] == [1, 2, 3]
    one, two = torch.tensor([1]), torch.tensor([0, 1])
    assert padded.padded_rows(one).tolist() == [1, 1] and padded.padded_rows(two).tolist() == [0, 1]
    assert plain.padded_rows(one).tolist() == [1] and plain.padded_rows(two).tolist() == [0, 1]
