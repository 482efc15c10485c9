"""``MaskedLinear.set_mask`` installs a copy: MaskUpdater writes each layer's mask in place (stop 60,
for torch 2.2's compiled forwards), so a mask tensor given to the layers of two models (the same
initial mask for a RigL and a GMP run, or two seeds) was both models' and the caller's: the first
model's update changed the second model's mask and the caller's tensor. Truth: the same run with
the mask cloned by hand before each ``set_mask``."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from catapult.sparsity import MaskUpdater, random_mask, sparsify_


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))


def _run(shared: bool, method: str):
    mask = random_mask((8, 6), 0.5, generator=torch.Generator().manual_seed(3))
    kept = mask.clone()
    a, b = _net(), _net()
    for model in (a, b):
        sparsify_(model[0], 1.0)
        model[0].set_mask(mask if shared else mask.clone())
    options = dict(update_every=1, end_step=10) if method == "rigl" else dict(update_every=1, end_step=10,
                                                                             final_density=0.2)
    updater_a, _ = MaskUpdater(a, method, **options), MaskUpdater(b, method, **options)
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen)
    nn.MSELoss()(a(x), y).backward()
    assert updater_a.step(1 if method == "rigl" else 5)   # (gmp's target at 5 of 10: 0.3 < 0.5)
    return a[0].mask.clone(), b[0].mask.clone(), mask, kept


@pytest.mark.parametrize("method", ["rigl", "gmp"])
def test_one_models_update_leaves_the_other_model_and_the_callers_tensor_alone(method):
    a_shared, b_shared, mask, kept = _run(True, method)
    a_own, b_own, _, _ = _run(False, method)
    assert torch.equal(a_shared, a_own) and not torch.equal(a_own, kept)   # A's update happened
    assert torch.equal(b_shared, kept) and torch.equal(b_own, kept)         # B's mask as it was
    assert torch.equal(mask, kept)                                          # and the caller's tensor
