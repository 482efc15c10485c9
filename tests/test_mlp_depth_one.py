"""An MLP of depth 1 (one Linear, in_features -> out_features) has no dimension that grows with the
width. Its table-form readout variance was ``1 / d_base`` = ``1 / width`` (1/512 at the default width
for 10 inputs, where SP's is 1/10, though the docstring says the base shape is exactly SP), and a
``base_width`` scaled its readout multiplier by ``1 / m_d`` and its SGD lr by ``m_d``."""
from __future__ import annotations

import pytest
import torch

from catapult import param_groups
from catapult.config import ConfigError, validate
from catapult.models import MLP


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("table", [dict(parametrization="supar"), dict(parametrization="mup", base_width=24),
                                   dict(parametrization="supar_init"), dict(parametrization="supar_lr")])
def test_the_table_form_at_its_base_shape_draws_the_sp_weights_bit_for_bit(depth, table):
    built = []
    for kwargs in (dict(parametrization="sp"), table):
        torch.manual_seed(3)
        built.append(MLP(10, 7, width=24, depth=depth, **kwargs))
    sp, other = built
    for a, b in zip(sp.layers, other.layers):
        assert torch.equal(a.weight, b.weight) and a.multiplier == b.multiplier == 1.0


def test_a_depth_one_readout_has_the_variance_of_its_fan_in():
    torch.manual_seed(0)
    layer = MLP(10, 20_000, width=512, depth=1, parametrization="supar").layers[0]
    # 200,000 draws of N(0, 1/10): the sample variance's relative std is sqrt(2 / 200000) = 0.3%
    assert layer.weight.var().item() == pytest.approx(0.1, rel=0.02)


def test_a_base_width_other_than_the_width_is_refused_at_depth_one():
    with pytest.raises(ValueError, match=r"MLP base_width=16 with depth 1: .* no width-sized dimension"):
        MLP(10, 2, width=64, depth=1, parametrization="mup", base_width=16)
    model = MLP(10, 2, width=64, depth=1, parametrization="mup", base_width=64)   # m_d = 1 is fine
    assert model.layers[0].multiplier == 1.0
    assert [g["lr_mult"] for g in param_groups(model, 0.1, "sgd")] == [1.0, 1.0]


def test_the_config_names_model_base_width():
    config = dict(data=dict(name="digits", n_train=32, n_test=16),
                  model=dict(name="mlp", width=64, depth=1, parametrization="mup", base_width=16),
                  train=dict(steps=2))
    with pytest.raises(ConfigError) as refused:
        validate(config)
    assert [key for key, _ in refused.value.problems] == ["model.base_width"]
    validate(dict(config, model=dict(config["model"], depth=2)))   # depth 2 has a width


def test_the_config_takes_a_base_width_equal_to_the_width_at_depth_one():
    # Mutation pass 23b (CK5): the check without "!= width" refused base_width == width (m_d = 1, the
    # base shape itself), which MLP(depth=1, base_width=width) builds
    model = dict(name="mlp", width=64, depth=1, parametrization="mup", base_width=64)
    config = validate(dict(data=dict(name="digits", n_train=32, n_test=16), model=model, train=dict(steps=2)))
    assert (config["model"]["depth"], config["model"]["base_width"], config["model"]["width"]) == (1, 64, 64)
    assert MLP(4, 3, width=64, depth=1, parametrization="mup", base_width=64).depth == 1
