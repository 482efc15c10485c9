"""torch Adam honours a flag set in a param group after construction (``group["amsgrad"] = True``);
GIAdam implements none of those flags and stepped without them, silently. Its step refuses them,
naming the group, before anything moves."""
from __future__ import annotations

import pytest
import torch

from catapult.optim import GIAdam


@pytest.mark.parametrize("key, value, message", [
    ("amsgrad", True, "param group 1: GIAdam does not support amsgrad=True"),
    ("capturable", True, "param group 1: GIAdam does not support capturable=True"),
    ("fused", True, "param group 1: GIAdam does not support fused=True"),
    ("decoupled_weight_decay", False, "param group 1: decoupled_weight_decay=False with weight_decay=0.1"),
])
def test_a_flag_set_later_is_refused_at_the_step(key, value, message):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = GIAdam([{"params": [a]}, {"params": [b], "weight_decay": 0.1}], lr=0.1)
    (a.sum() + b.sum()).backward()
    opt.step()
    opt.param_groups[1][key] = value
    before = [a.detach().clone(), b.detach().clone()]
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])   # nothing moved
    opt.param_groups[1][key] = not value if key != "fused" else None  # back off: steps again
    opt.step()
    assert not torch.equal(b, before[1])
