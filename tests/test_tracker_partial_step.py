"""catapult.SharpnessTracker beside an SGD that moves part of the model (a parameter held by no
group, or a group at lr 0): the sharpness that bounds the step is that of the block it moves,
checked against the dense float64 Hessian's block."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_hessian

LOSS = nn.MSELoss()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _batch(n=12):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, generator=gen, dtype=torch.float64),
            torch.randn(n, 2, generator=gen, dtype=torch.float64))


def _top(a) -> float:
    a = np.asarray(a)
    return float(np.linalg.eigvalsh((a + a.T) / 2)[-1])


@pytest.mark.parametrize("groups", ["head only", "body at lr 0"])
def test_sgd_that_moves_part_of_the_model_records_the_moved_blocks_sharpness(groups):
    """SGD holding only the head (or the body in a group at lr 0), with every parameter trainable:
    the step x_head -= lr g_head is stable while lambda_max(H_head,head) < 2 / lr; the tracker
    recorded lambda_max(H) of the whole model (1.866 for 1.502 here), whose body block the step
    never moves."""
    batch, model = _batch(), _net()
    if groups == "head only":
        opt = torch.optim.SGD(model[2].parameters(), lr=0.1)
    else:
        opt = torch.optim.SGD([{"params": model[2].parameters(), "lr": 0.1},
                               {"params": model[0].parameters(), "lr": 0.0}])
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-10, max_iter=300).step(batch)
    n0 = sum(p.numel() for p in model[0].parameters())
    H = dense_hessian(model, LOSS, batch).numpy()
    assert record.kind == "lr_scaled" and record.threshold == pytest.approx(2 / 0.1)
    assert record.value == pytest.approx(_top(H[n0:, n0:]), rel=1e-8)
    assert _top(H) > 1.2 * record.value          # the whole model's top is another number
