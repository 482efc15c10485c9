"""Static random masks: exact counts, zeros that stay zero, exact state_dict round trips."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from rounding import assert_within_rounding, both_sides

from catapult.models import GPT, MLP
from catapult.sparsity import (MaskedLinear, exact_nonzeros, masked_modules, model_density,
                               random_mask, sparsify_)


@pytest.mark.parametrize("shape,density", [((64, 64), 0.5), ((37, 11), 0.3), ((128, 32), 1 / 16),
                                           ((10,), 0.25), ((3, 5, 7), 0.9)])
def test_exact_masks_have_exactly_round_density_times_n_nonzeros(shape, density):
    numel = torch.Size(shape).numel()
    mask = random_mask(shape, density, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == torch.Size(shape)
    expected = max(1, int(density * numel + 0.5))  # round half up
    assert int(mask.sum()) == expected == exact_nonzeros(numel, density)


def test_rounding_and_edge_cases():
    assert exact_nonzeros(10, 0.25) == 3  # 2.5 rounds up
    assert exact_nonzeros(10, 0.01) == 1  # never an all-zero matrix
    assert random_mask((4, 4), 1.0).all()
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density"):
            random_mask((4, 4), bad)
    with pytest.raises(ValueError, match="method"):
        random_mask((4, 4), 0.5, method="topk")


def test_masks_are_seeded_and_bernoulli_is_approximately_right():
    a = random_mask((50, 50), 0.3, generator=torch.Generator().manual_seed(7))
    b = random_mask((50, 50), 0.3, generator=torch.Generator().manual_seed(7))
    c = random_mask((50, 50), 0.3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    bern = random_mask((200, 200), 0.3, method="bernoulli",
                       generator=torch.Generator().manual_seed(0))
    # Binomial(40000, 0.3): std ~ 92
    assert abs(int(bern.sum()) - 12000) < 500


def _train(model, steps, opt, x, y):
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
])
def test_masked_weights_are_zero_and_stay_zero_under_training(make_opt):
    torch.manual_seed(0)
    model = MLP(16, 4, 64, 4, parametrization="supar", density=0.25)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    before = [layer.weight.detach().clone() for _, layer in masked_modules(model)]
    for _, layer in masked_modules(model):
        assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
    _train(model, 5, make_opt(model.parameters()), x, y)
    for (_, layer), w0 in zip(masked_modules(model), before):
        assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
        assert not torch.equal(layer.weight[layer.mask], w0[layer.mask])  # live weights train
        assert torch.count_nonzero(layer.weight.grad[~layer.mask]) == 0
    assert model_density(model) == pytest.approx(0.25, abs=1e-4)


def test_state_dict_round_trip_restores_masks_and_outputs_exactly():
    torch.manual_seed(0)
    a = MLP(16, 4, 64, 4, parametrization="supar", base_width=32, density=0.25)
    torch.manual_seed(1)
    b = MLP(16, 4, 64, 4, parametrization="supar", base_width=32, density=0.25)
    x = torch.randn(8, 16)
    assert not torch.equal(a(x), b(x))
    assert "layers.1.mask" in a.state_dict()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(a(x), b(x))
    for (_, la), (_, lb) in zip(masked_modules(a), masked_modules(b)):
        assert torch.equal(la.mask, lb.mask)

    torch.manual_seed(0)
    g1 = GPT(32, 32, 2, 2, 8, parametrization="supar", density=0.5)
    torch.manual_seed(1)
    g2 = GPT(32, 32, 2, 2, 8, parametrization="supar", density=0.5)
    idx = torch.randint(0, 32, (2, 8))
    g2.load_state_dict(g1.state_dict())
    assert torch.equal(g1(idx), g2(idx))


def test_deepcopy_keeps_the_mask_and_device_moves_follow():
    torch.manual_seed(0)
    layer = MaskedLinear(8, 8, density=0.5)
    clone = copy.deepcopy(layer)
    assert torch.equal(clone.mask, layer.mask) and clone.mask is not layer.mask
    double = copy.deepcopy(layer).double()
    assert double.mask.dtype == torch.bool and double.weight.dtype == torch.float64
    x = torch.randn(3, 8)
    magnitude = x.abs() @ (layer.weight * layer.mask).abs().T + layer.bias.abs()   # the mask product is exact
    assert_within_rounding(layer(x), x @ (layer.weight * layer.mask).T + layer.bias,
                           both_sides(8 + 1, magnitude, torch.float32))


def test_sparsify_converts_in_place_and_keeps_keys():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
    layer, weight = net[2], net[2].weight
    out = sparsify_(net[2], 0.5, generator=torch.Generator().manual_seed(0))
    assert out is layer and net[2] is layer and layer.weight is weight
    assert isinstance(layer, MaskedLinear)
    assert set(net.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias", "2.mask"}
    assert int(layer.mask.sum()) == 128
    assert torch.count_nonzero(layer.weight) == 128

    class MyLinear(nn.Linear):
        pass

    with pytest.raises(TypeError, match="MyLinear"):
        sparsify_(MyLinear(4, 4), 0.5)
    with pytest.raises(ValueError, match="shape"):
        MaskedLinear(4, 4).set_mask(torch.ones(3, 4, dtype=torch.bool))
