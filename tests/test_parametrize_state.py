"""A state_dict carries its model's parameterization and density; loading it into a model
with another one is refused with a message that names both."""
from __future__ import annotations

import io

import pytest
import torch

import catapult
from catapult.models import MLP
from catapult.parametrize_state import ParametrizationMismatch, model_density


def _saved(model) -> dict:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _mlp(parametrization, density, seed=0):
    torch.manual_seed(seed)
    return MLP(12, 3, width=32, depth=3, parametrization=parametrization, base_width=16, density=density)


def test_same_parametrization_and_density_loads_exactly():
    a, b = _mlp("supar", 0.5, seed=0), _mlp("supar", 0.5, seed=1)
    b.load_state_dict(_saved(a))
    x = torch.randn(5, 12)
    assert torch.equal(a(x), b(x))
    assert model_density(a) == 0.5 and model_density(_mlp("sp", 1.0)) == 1.0


def test_another_parametrization_is_refused_naming_both():
    target = _mlp("mup", 0.5)
    before = [t.clone() for t in target.state_dict().values()]
    with pytest.raises(ParametrizationMismatch, match=r"saved from a model with parametrization 'supar', "
                                                      r"density 0\.5; .* has parametrization 'mup', density 0\.5"):
        target.load_state_dict(_saved(_mlp("supar", 0.5)))
    assert all(torch.equal(a, b) for a, b in zip(before, target.state_dict().values()))  # nothing copied


def test_another_density_is_refused_naming_both():
    with pytest.raises(ParametrizationMismatch, match=r"density 0\.5; .* density 0\.25"):
        _mlp("supar", 0.25).load_state_dict(_saved(_mlp("supar", 0.5)))
    with pytest.raises(ParametrizationMismatch, match=r"parametrization 'sp', density 1; .* density 0\.5"):
        _mlp("sp", 0.5).load_state_dict(_saved(_mlp("sp", 1.0)), strict=False)


def test_parametrize_on_a_user_model_records_it_too():
    def build(p):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                  torch.nn.Linear(16, 1))
        return catapult.parametrize(net, p, base_width=4, density=0.5, mask_seed=0)

    build("mup").load_state_dict(_saved(build("mup")))
    with pytest.raises(ParametrizationMismatch, match="'mup'.*'supar'"):
        build("supar").load_state_dict(_saved(build("mup")))
