"""coord_check's default learning rate (mutation pass 13): ``lr`` left out is the documented 1e-2
for a named optimizer, not any other; truth: the same runs with ``lr=1e-2`` written out, bit for
bit (and ``lr=1e-3`` differs, so the lr reaches the steps)."""
from __future__ import annotations

import torch

from catapult.coord_check import coord_check
from catapult.models.mlp import MLP


def _rows(**kwargs):
    x, y = torch.randn(16, 6, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    return coord_check(lambda w: MLP(6, 3, int(w), 2), [8], batch=(x, y), steps=2, seeds=(0,), optimizer="sgd",
                       **kwargs)


def test_an_lr_left_out_is_1e_2():
    default = _rows()
    assert default == _rows(lr=1e-2)
    assert default != _rows(lr=1e-3)   # the lr reaches the step: the second step's outputs move with it
