"""BatchStream against engine.loop's documented rule, re-derived with torch.randperm: epoch e draws
perm_e from the data generator; batch b is perm_e[b*B:(b+1)*B]; the last incomplete batch is
dropped; step t uses epoch t // (n // B)."""
from __future__ import annotations

import pytest
import torch

from catapult.config import ConfigError
from catapult.engine.run_data import BatchStream


def _expected(n, batch, seed, steps):
    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch
    out, perm = [], None
    for t in range(steps):
        if t % per_epoch == 0:
            perm = torch.randperm(n, generator=gen)
        b = t % per_epoch
        out.append(perm[b * batch:(b + 1) * batch])
    return out


def test_batches_follow_the_documented_permutation_rule_and_drop_the_incomplete_batch():
    n, batch, seed = 10, 4, 123            # 2 full batches per epoch; samples 8, 9 of each permutation unused
    x = torch.arange(n, dtype=torch.float64).reshape(n, 1) * 10
    y = torch.arange(n)
    stream = BatchStream(x, y, batch, seed)
    for t, idx in enumerate(_expected(n, batch, seed, 7)):
        xb, yb = stream.batch(t)
        assert yb.tolist() == idx.tolist() and xb.flatten().tolist() == (idx * 10.0).tolist(), t
        assert stream.batch(t)[1].tolist() == idx.tolist()  # asking again for the same step: the same batch


def test_a_batch_as_large_as_the_training_set_is_allowed_one_more_is_not():
    x, y = torch.zeros(6, 2), torch.zeros(6, dtype=torch.long)
    stream = BatchStream(x, y, 6, 0)
    assert sorted(stream.batch(0)[1].tolist()) == [0] * 6 and stream.batch(1)[0].shape == (6, 2)
    with pytest.raises(ConfigError, match="7 exceeds the 6 training samples"):
        BatchStream(x, y, 7, 0)

