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


def _tied(d=8, seed=0):
    """Two MaskedLinear layers sharing one weight and its mask (catapult.parametrize's tie)."""
    gen = torch.Generator().manual_seed(seed)
    a = MaskedLinear(d, d, density=0.25, generator=gen)
    b = MaskedLinear(d, d, density=1.0)
    b.weight = a.weight
    b.set_mask(a.mask)
    return torch.nn.Sequential(a, torch.nn.Tanh(), b), a, b


def test_rigl_updates_a_tied_weight_as_one_matrix_with_the_summed_grow_score():
    # each layer of the tie took its own RigL step on the shared weight: the masks parted and
    # both zeroed it: 46 of the 64 entries a density of 0.25 promises stayed live (parametrize tie, d = 16)
    import numpy as np

    from catapult.sparsity import MaskUpdater

    torch.manual_seed(0)
    net, a, b = _tied()
    x = torch.randn(16, 8)
    updater = MaskUpdater(net, "rigl", update_every=1, end_step=10, drop_fraction=1.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    mask0 = a.mask.clone()
    net(x).pow(2).sum().backward()
    # truth: the dense gradient of the loss w.r.t. the one matrix W ⊙ M, used by both layers
    leaf = (a.weight * a.mask).detach().requires_grad_()
    h = torch.tanh(x @ leaf.T + a.bias.detach())
    (h @ leaf.T + b.bias.detach()).pow(2).sum().backward()
    score = leaf.grad.abs().numpy().ravel()
    optimizer.step()
    w = a.weight.detach().abs().numpy().ravel().copy()
    updater.step(5, optimizer)
    # RigL by hand: fraction (1/2)(1 + cos(pi 5/10)) = 0.5 of the 16 active entries
    active = mask0.numpy().ravel()
    k = int(np.floor(0.5 * active.sum()))
    idx = np.flatnonzero(active)
    kept = active.copy()
    kept[idx[np.argsort(w[idx])[:k]]] = False
    out = np.flatnonzero(~kept)
    kept[out[np.argsort(-score[out])[:k]]] = True
    assert np.array_equal(a.mask.numpy().ravel(), kept) and np.array_equal(b.mask.numpy().ravel(), kept)
    assert a.mask is b.mask
    assert torch.all(a.weight[~a.mask] == 0)


def test_tied_layers_with_different_masks_are_refused():
    import pytest

    from catapult.sparsity import MaskUpdater

    net, a, b = _tied()
    b.set_mask(~a.mask)
    with pytest.raises(ValueError, match="share one weight but have different masks"):
        MaskUpdater(net, "rigl", update_every=1, end_step=10)


def test_an_mlp_without_hidden_layers_refuses_a_density_it_cannot_have():
    # depth 1 and 2 have only the input and the readout, which stay dense: density 0.25 trained the
    # dense network (model_density 1.0, no mask) under model.density 0.25, and a density sweep
    # recorded one run several times
    import pytest

    from catapult.config import ConfigError, validate
    from catapult.models import MLP
    from catapult.sparsity import model_density

    for depth in (1, 2):
        config = dict(data=dict(name="digits", n_train=32, n_test=16),
                      model=dict(name="mlp", width=8, depth=depth, density=0.25), train=dict(steps=2))
        with pytest.raises(ConfigError) as refused:
            validate(config)
        assert [key for key, _ in refused.value.problems] == ["model.density"]
        with pytest.raises(ValueError, match="depth >= 3"):
            MLP(4, 2, width=8, depth=depth, density=0.25)
        with pytest.raises(ValueError, match="depth >= 3"):
            MLP(4, 2, width=8, depth=depth, base_density=0.5)
        assert model_density(MLP(4, 2, width=8, depth=depth)) == 1.0   # dense: as before
    # depth 3 has one hidden 8 x 8 matrix: round(0.25 * 64) = 16 entries kept of its 64
    assert model_density(MLP(4, 2, width=8, depth=3, density=0.25)) == 16 / 64


def test_parametrize_refuses_a_density_for_a_model_without_a_hidden_layer():
    # an input and a readout only: density 0.25 drew no mask (model_density 1.0) and returned the
    # dense model, initialised and with learning rates as if it were the sparse one
    import pytest
    import torch.nn as nn

    import catapult
    from catapult.sparsity import model_density

    def two_layers():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    with pytest.raises(ValueError, match="none is hidden"):
        catapult.parametrize(two_layers(), "supar", base_width=4, density=0.25)
    assert model_density(catapult.parametrize(two_layers(), "supar", base_width=4)) == 1.0
    three = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert model_density(catapult.parametrize(three, "supar", base_width=4, density=0.25)) == 16 / 64


def test_the_parameter_count_probe_of_a_sparse_mlp_with_a_sparse_base_builds():
    # the size check builds the mlp dense at depths 2 and 3; it kept base_density, which depth 2 refuses
    from catapult.config import validate
    from catapult.engine.build import build_run

    config = validate(dict(data=dict(name="digits", n_train=32, n_test=16), train=dict(steps=1),
                           model=dict(name="mlp", width=10, depth=4, density=0.25, base_density=0.5),
                           eval=dict(sharpness_every=0, test_every=0)))
    assert build_run(config).n_params == (64 * 10 + 10) + 2 * (10 * 10 + 10) + (10 * 10 + 10)


def test_rigl_update_refuses_a_fraction_outside_0_1_and_parts_of_different_shapes():
    # fraction 1.5 of 2 active entries dropped 3 (one inactive) and grew 3: the count rose to 3
    import pytest

    w, m = torch.tensor([0.5, -0.1, 0.0, 0.0]), torch.tensor([True, True, False, False])
    for fraction in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="fraction must be a finite number in"):
            rigl_update(w, m, torch.ones(4), fraction)
    with pytest.raises(ValueError, match="must have one shape"):
        rigl_update(w, m, torch.ones(3), 0.5)
    assert int(rigl_update(w, m, torch.ones(4), 1.0).sum()) == 2
