"""catapult.config.checks' sparsity refusals at their edges: the fix a rigl refusal offers where
T_end is step 1 (no update_every below 1 exists), rigl or gmp on a model without masks (one problem,
saying use static, not also "use rigl" or "set density < 1", which that model refuses as well), and an mlp without hidden
layers given a base_density below 1 (SμPar's density factor of masks it cannot have)."""
from __future__ import annotations

import pytest

from catapult.config import ConfigError, validate
from test_sparsity_schedule_config import _config


def test_a_rigl_refusal_at_t_end_1_offers_a_fix_that_exists():
    with pytest.raises(ConfigError) as refused:
        validate(_config(20, method="rigl", update_every=1, end_fraction=0.05))   # T_end = round(1.0) = 1
    [(key, message)] = refused.value.problems
    assert key == "model.sparsity.update_every" and "update_every < 1" not in message
    assert "raise end_fraction or train.steps" in message
    with pytest.raises(ConfigError) as refused:
        validate(_config(20, method="rigl", update_every=15, end_fraction=0.75))  # T_end = 15
    assert "set update_every < 15" in refused.value.problems[0][1]


@pytest.mark.parametrize("model, data", [
    (dict(name="wrn", depth=10, density=1.0), "cifar10"), (dict(name="mlp", depth=2, density=1.0), "digits")])
@pytest.mark.parametrize("method", ["rigl", "gmp"])
def test_dynamic_sparsity_on_a_model_without_masks_is_one_problem_saying_use_static(model, data, method):
    # rigl said "set model.density < 1", and the model's own check then asked for density 1; gmp
    # said "use rigl", which these models refuse too
    config = {"data": {"name": data}, "model": dict(model, sparsity={"method": method})}
    with pytest.raises(ConfigError) as refused:
        validate(config)
    assert [key for key, _ in refused.value.problems] == ["model.sparsity.method"]
    message = str(refused.value)
    assert "use static" in message and "use rigl" not in message and "density < 1" not in message


@pytest.mark.parametrize("depth", [1, 2])
def test_an_mlp_without_hidden_layers_refuses_a_base_density_below_1(depth):
    config = dict(data=dict(name="digits", n_train=32, n_test=16),
                  model=dict(name="mlp", width=8, depth=depth, parametrization="supar", base_width=8,
                             base_density=0.5),
                  train=dict(steps=2))
    with pytest.raises(ConfigError) as refused:
        validate(config)
    assert [key for key, _ in refused.value.problems] == ["model.density"]
    assert "depth >= 3" in str(refused.value)


@pytest.mark.parametrize("method, key, value", [
    ("static", "update_every", 5), ("static", "drop_fraction", 0.5), ("static", "start_fraction", 0.1),
    ("static", "end_fraction", 0.5), ("rigl", "start_fraction", 0.1), ("gmp", "drop_fraction", 0.5)])
def test_each_sparsity_key_a_method_does_not_read_is_refused(method, key, value):
    # static masks read none of the four, rigl no start_fraction, gmp no drop_fraction (README)
    sparsity = {"method": method, "update_every": 1, "end_fraction": 0.75} if method != "static" else {"method": method}
    with pytest.raises(ConfigError) as refused:
        validate(_config(20, **dict(sparsity, **{key: value})))
    assert [k for k, _ in refused.value.problems] == [f"model.sparsity.{key}"], refused.value.problems
