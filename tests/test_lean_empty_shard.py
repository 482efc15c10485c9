"""``memory='lean'`` on a batch with no samples: its sizing forward divided by the sample count, a
``ZeroDivisionError`` (a defect's traceback from the command line), where ``memory='fast'`` refuses the
empty batch by name, and with ``distributed=True`` every other entry point names the empty rank's shard.
Truth: the messages of the fast path and of ``shard_weight`` for the same inputs. Two gloo ranks, a
20 s group timeout, so a rank left waiting fails the test."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import catapult
from gloo_ranks import on_ranks


def _problem(rows):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return model, nn.MSELoss(), (torch.randn(rows, 3, dtype=torch.float64), torch.randn(rows, 2, dtype=torch.float64))


def test_an_empty_batch_is_refused_by_name_in_one_process():
    model, loss_fn, batch = _problem(0)
    with pytest.raises(ValueError, match="its inputs have 0 samples"):
        catapult.sharpness(model, loss_fn, batch)            # the fast path's refusal
    with pytest.raises(ValueError, match=r"^memory='lean': the batch is empty: its inputs have 0 samples$"):
        catapult.sharpness(model, loss_fn, batch, memory="lean")
    with pytest.raises(ValueError, match="0 samples"):
        catapult.top_eigenpairs(model, loss_fn, batch, k=2, memory="lean")


def _empty_shard_on_rank_1(rank, world):
    model, loss_fn, batch = _problem(6 if rank == 0 else 0)
    out = {}
    for name, memory in (("fast", "fast"), ("lean", "lean")):
        try:
            catapult.sharpness(model, loss_fn, batch, memory=memory, distributed=True)
            out[name] = None
        except Exception as err:   # noqa: BLE001 - the kind is checked
            out[name] = (type(err).__name__, str(err))
    return out


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_an_empty_shard_under_lean_is_named_on_every_rank():
    expected = ("ValueError", "distributed=True: the shard of rank 1 holds no samples; give every rank some")
    for got in on_ranks(_empty_shard_on_rank_1, timeout_s=20.0):
        assert got["fast"] == expected          # shard_weight's refusal, the truth for the message
        assert got["lean"] == expected          # was ZeroDivisionError('division by zero') on both
