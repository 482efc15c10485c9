"""distributed=True: a rank whose product raises (an out-of-memory error, a forward that fails on
its shard) stops every rank within that product, whether or not its caller catches the error.
Before, where the failing rank's caller caught it and carried on, the other rank waited in the
product's all-reduce until the group's timeout (gloo's default 30 minutes; here the test's)."""
import math
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import catapult
from gloo_ranks import on_ranks

MESSAGE = "out of memory on this rank (simulated)"


class FailsAtCall(nn.Module):
    """A tanh MLP whose forward raises at call ``fail_at`` (0: never)."""

    def __init__(self, fail_at):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError(MESSAGE)
        return self.net(x)


class RootParameter(nn.Module):
    """``net(x) + sqrt(p)`` at ``p = 0``: a finite loss whose gradient and products are not finite."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1).double()
        self.p = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        return self.net(x) + self.p.sqrt()


def one_rank_fails(rank, world):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, generator=gen, dtype=torch.float64), torch.randn(32, 1, generator=gen, dtype=torch.float64)
    shard = (x[rank::2], y[rank::2])
    out = {}
    # exact products re-running the forward per micro-batch (2 a product), and finite differences
    for name, kw in (("exact", {"chunk_size": 8}), ("differences", {"hvp": "finite_difference"})):
        try:
            catapult.sharpness(FailsAtCall(12 if rank == 1 else 0), nn.MSELoss(), shard, tol=1e-12,
                               distributed=True, **kw)
            out[name] = None
        except RuntimeError as err:   # caught, and the process carries on
            frames = [f.name for f in traceback.extract_tb(err.__traceback__)]
            out[name] = (type(err).__name__, str(err), "_reduced" in frames)
    # what the caller does next: a collective of its own, met by every rank
    out["after"] = float(catapult.curvature.distributed.all_reduce_sum(torch.ones(1, dtype=torch.float64)))
    # a product that is nan with no rank failing is returned as it is (every rank asks, none raises)
    est = catapult.sharpness(RootParameter(), nn.MSELoss(), shard, distributed=True, max_iter=3)
    out["nan"] = (est.value, est.converged)
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_product_that_raises_on_one_rank_stops_every_rank():
    zero, one = on_ranks(one_rank_fails, timeout_s=60.0)
    for name in ("exact", "differences"):
        # rank 1 failed inside a product (the operator's all-reduced product in its traceback)
        assert one[name] == ("RuntimeError", MESSAGE, True)
        # rank 0 raised the same type and message, in that product too
        assert zero[name] == one[name]
    assert zero["after"] == 2.0 and one["after"] == 2.0
    single = catapult.sharpness(RootParameter(), nn.MSELoss(), (torch.randn(32, 3, dtype=torch.float64),
                                                                torch.randn(32, 1, dtype=torch.float64)), max_iter=3)
    assert math.isnan(single.value) and not single.converged
    assert math.isnan(zero["nan"][0]) and zero["nan"][1] is False and math.isnan(one["nan"][0])
