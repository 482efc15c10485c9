"""A curvature call on a model sharded by FSDP2 that raises midway (its forward inside a block,
its loss_fn, a critical-lr trial) leaves the model as it was: every parameter a DTensor shard
again, and the caller's next training steps those of a model the call never touched. (FSDP's
root kept the gathered weights of the call's last forward, theta + h u of a difference: the next
training forward read them; after a critical-lr trial raised inside a block, it failed on mixed
Tensor and DTensor weights.) On 2 gloo ranks: on one rank FSDP gathers nothing."""
import pytest
import torch
import torch.nn as nn

import catapult
from gloo_ranks import on_ranks
from torch_features import FSDP2

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in"),
              FSDP2]   # every test shards with fully_shard


class Boom(Exception):
    pass


class RaiseOnCall(nn.Module):
    """The identity, raising on its ``n``-th forward (``n`` < 1: never)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise Boom(f"forward {self.calls}")
        return x


def _after_a_raise(rank, world, cases):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_default_dtype(torch.float64)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)
    batch = (x[rank::world], y[rank::world])
    out = {}
    for name, call, where, n in [("untouched", None, None, 0)] + cases:
        torch.manual_seed(0)
        # a block of its own, then the root's layers: the raise comes between the root's gathers
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), RaiseOnCall(n if where == "model" else 0), nn.Linear(5, 2))
        fully_shard(model[0])
        fully_shard(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = {"calls": 0}

        def loss_fn(output, target):
            losses["calls"] += 1
            if where == "loss" and losses["calls"] == n:
                raise Boom(f"loss {n}")
            return nn.functional.mse_loss(output, target)

        if call is not None:
            with pytest.raises(Boom):
                if call == "critical_lr":
                    catapult.critical_lr(model, loss_fn, batch, opt, distributed=True)
                else:
                    getattr(catapult, call)(model, loss_fn, batch, distributed=True)
        sharded = all(isinstance(p, DTensor) for p in model.parameters())
        steps = []
        for _ in range(2):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(batch[0]), batch[1])
            loss.backward()
            opt.step()
            steps.append(loss.item())
        out[name] = (sharded, steps)
    return out


@pytest.mark.slow  # two spawned interpreters importing torch
def test_a_sharded_curvature_call_that_raises_midway_leaves_the_shards_and_the_next_steps_alone():
    cases = [("a difference's forward raises in the model", "sharpness", "model", 6),
             ("a difference's loss_fn raises", "sharpness", "loss", 6),
             ("the mean-or-sum test's loss_fn raises", "top_eigenpairs", "loss", 1),
             ("a critical-lr trial raises in the model", "critical_lr", "model", 5)]
    for rank, got in enumerate(on_ranks(_after_a_raise, cases)):
        untouched = got.pop("untouched")
        for name, (sharded, steps) in got.items():
            assert sharded, (rank, name)
            assert steps == untouched[1], (rank, name)   # bit for bit: the same weights in every forward
