"""``arguments.check_seed``'s range ends (mutation pass 14): the seeds a torch generator takes,
``-2**63 .. 2**64 - 1``, are taken, one past either end is refused. Truth: ``torch.Generator``."""
from __future__ import annotations

import pytest
import torch

from catapult.arguments import check_seed


@pytest.mark.parametrize("seed", [-2 ** 63, 2 ** 64 - 1])
def test_the_ends_torch_takes_are_taken(seed):
    torch.Generator().manual_seed(seed)   # the truth: torch's generator takes it
    assert check_seed("MLP", "mask_seed", seed) == seed


@pytest.mark.parametrize("seed", [-2 ** 63 - 1, 2 ** 64])
def test_one_past_either_end_is_refused(seed):
    with pytest.raises((ValueError, RuntimeError), match="Overflow"):   # torch's words (2.2: a RuntimeError)
        torch.Generator().manual_seed(seed)
    with pytest.raises(ValueError, match=r"MLP mask_seed must be an integer in \[-2\*\*63, 2\*\*64\)"):
        check_seed("MLP", "mask_seed", seed)
