"""Counts of the sparse layers by hand: a rectangular layer's density is kept / (out x in), and
RigL's k is floor(fraction x active), not rounded up."""
from __future__ import annotations

import torch

from catapult.sparsity import MaskedLinear, model_density, rigl_update


def test_a_rectangular_layers_density_is_its_kept_fraction_of_every_entry():
    # 6 inputs x 4 outputs = 24 entries; density 0.25 keeps round(6.0) = 6 of them
    layer = MaskedLinear(6, 4, density=0.25, generator=torch.Generator().manual_seed(0))
    assert int(layer.mask.sum()) == 6 and layer.mask.shape == (4, 6)
    assert layer.density == 6 / 24
    assert model_density(torch.nn.Sequential(layer, MaskedLinear(4, 2))) == 6 / 24  # the dense one has no mask
    assert "density=0.25" in repr(layer)


def test_rigl_drops_floor_of_fraction_times_active():
    # 5 active entries, fraction 0.3: k = floor(1.5) = 1. Drop the smallest |w| active (idx 7,
    # 0.05), grow the largest |g| inactive (idx 4, |-3|); with k = 2 idx 1 and 6 would change too
    w = torch.tensor([0.5, -0.1, 0.0, 0.3, 0.0, -0.9, 0.0, 0.05])
    m = torch.tensor([1, 1, 0, 1, 0, 1, 0, 1], dtype=torch.bool)
    g = torch.tensor([9.0, 0.0, 0.2, 0.0, -3.0, 0.0, 1.0, 0.0])
    new = rigl_update(w, m, g, fraction=0.3)
    assert new.tolist() == [True, True, False, True, True, True, False, False]
    # fraction 0.19 of 5: k = floor(0.95) = 0, nothing changes
    assert torch.equal(rigl_update(w, m, g, fraction=0.19), m)
