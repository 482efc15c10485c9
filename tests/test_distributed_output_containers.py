"""``distributed=True`` on 2 gloo ranks (loopback) with a model whose outputs come in a UserDict, a
dict subclass or a dataclass, whose forward needs its whole shard (a state shaped by it), and a sum
loss that is 0 on each shard (targets it fits exactly): whether the loss is a mean or a sum is then
told from the output's rows, nudged where the loss is 0 (``shard_reduction``). torch's pytree took
such an output for a leaf, so nothing was nudged, no rank could tell, a mean was taken and the
sharpness came out at 1/2 the union's; against the dense float64 Hessian of the union's sum loss
(the sum of the shards' own)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import catapult
from dense_curvature import dense_hessian
from gloo_ranks import on_ranks
from test_ggn_output_containers import Encoding, Outputs   # a UserDict and a dict subclass

pytestmark = [pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built"),
              pytest.mark.slow]   # two spawned interpreters importing torch

ROWS = 4   # each rank's shard; the model's state has as many rows


@dataclasses.dataclass
class Result:
    out: torch.Tensor


WRAP = {"userdict": lambda z: Encoding(out=z), "dict_subclass": lambda z: Outputs(out=z), "dataclass": Result}


def read(out):
    return out.out if isinstance(out, Result) else out["out"]


def sum_loss(out, y):
    return nn.functional.mse_loss(read(out), y, reduction="sum")


class RowState(nn.Module):
    """``net(x) + rows``: ``rows`` (a buffer) has the shard's sample count, so a half fails."""

    def __init__(self, case: str):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.register_buffer("rows", torch.randn(ROWS, 2))
        self.case = case

    def forward(self, x):
        return WRAP[self.case](self.net(x) + self.rows)


def problem(case: str, rank: int):
    torch.manual_seed(0)
    model = RowState(case).double()
    x = torch.randn(2 * ROWS, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shard = x[rank * ROWS:(rank + 1) * ROWS]
    with torch.no_grad():
        y = read(model(shard)).clone()     # fitted exactly: the loss is 0 on the shard
    return model, (shard, y)


def measure(rank, world, case):
    model, shard = problem(case, rank)
    return catapult.sharpness(model, sum_loss, shard, tol=1e-10, distributed=True).value


@pytest.mark.parametrize("case", list(WRAP))
def test_a_sum_loss_of_a_wrapped_output_is_weighted_as_a_sum(case):
    def shard_hessian(rank):
        model, shard = problem(case, rank)
        return dense_hessian(model, sum_loss, shard).numpy()

    union = shard_hessian(0) + shard_hessian(1)     # a sum loss: the union's Hessian is the shards' sum
    truth = float(np.linalg.eigvalsh(union)[-1])
    for value in on_ranks(measure, case):
        assert value == pytest.approx(truth, rel=1e-7)
