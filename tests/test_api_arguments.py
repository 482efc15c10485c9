"""Wrong arguments to the Python API are named where they are passed: a batch that is not an
``(inputs, targets)`` pair, a model that is not a module, the coordinate check's sizes and
seeds, and a GI-Adam state saved for parameters of other shapes. Each gave an error from deep
inside (``too many values to unpack``, ``'generator' object has no attribute 'modules'``) or
a silent wrong run (``seeds="01"`` ran seeds 0 and 1)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import catapult
from catapult.coord_check import coord_check
from catapult.models import MLP
from catapult.optim import GIAdam

X, Y = torch.randn(8, 3), torch.randn(8, 2)
MSE = nn.MSELoss()


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("batch, words", [
    (X, r"batch must be a pair \(inputs, targets\); got a tensor of shape \(8, 3\)"),
    ((X, Y, Y), r"batch must be a pair .*; got a tuple of 3 items"),
    ({"x": X, "y": Y}, r"batch must be a pair .*; got a dict of 2 items"),
    ((X[:0], Y[:0]), "batch is empty: its inputs have 0 samples"),
])
def test_a_batch_that_is_not_a_pair_is_named(batch, words):
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="critical_lr: " + words):
        catapult.critical_lr(model, MSE, batch, _sgd(model))
    pcw = catapult.schedules.PersistentCatapultWarmup(_sgd(model), model, MSE, 1.0)
    with pytest.raises(ValueError, match="PersistentCatapultWarmup.step: " + words):
        pcw.step(batch)
    with pytest.raises(ValueError, match="coord_check: " + words):
        coord_check(lambda w: MLP(3, 2, width=int(w), depth=2), [8], batch=batch, steps=1, seeds=[0])


def test_a_model_that_is_not_a_module_is_named():
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"critical_lr: model must be a torch.nn.Module \(the model itself, not its parameters\), got function"):
        catapult.critical_lr(lambda x: model(x), MSE, (X, Y), _sgd(model))
    with pytest.raises(TypeError, match=r"param_groups: model must be a torch.nn.Module \(the model itself, not its "
                                        r"parameters\), got generator"):
        catapult.param_groups(model.parameters(), 0.1)
    with pytest.raises(TypeError, match="parametrize: model must be a torch.nn.Module"):
        catapult.parametrize(3)


@pytest.mark.parametrize("kwargs, words", [
    ({"steps": 2.5}, "steps must be an integer >= 1; got 2.5"),
    ({"steps": float("nan")}, "steps must be an integer >= 1; got nan"),
    ({"seeds": []}, "seeds must be a non-empty list of integer seeds"),
    ({"seeds": "01"}, "seeds must be a list of integer seeds; got '01'"),
    ({"seeds": [0.5]}, "seeds must be a non-empty list of integer seeds"),
    ({"values": []}, "values is empty"),
])
def test_coord_check_names_its_bad_arguments(kwargs, words):
    args = {"values": [8], "steps": 1, "seeds": [0], **kwargs}
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    with pytest.raises(ValueError, match="coord_check " + words):
        coord_check(lambda w: MLP(4, 3, width=int(w), depth=3), args.pop("values"), batch=batch, **args)


def test_gi_adam_refuses_a_state_of_other_shapes_at_load():
    # it loaded, and the next step() failed inside the update ("The size of tensor a (3) must match")
    small, large = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    source = GIAdam([small], lr=0.1)
    small.grad = torch.ones(3)
    source.step()
    target = GIAdam([large], lr=0.1)
    with pytest.raises(ValueError, match=r"state_dict param group 0: \w+ of parameter 0 has shape \(3,\), the "
                                         r"parameter it loads into \(4,\)"):
        target.load_state_dict(source.state_dict())
    assert not target.state  # nothing was loaded
    same = GIAdam([nn.Parameter(torch.zeros(3))], lr=0.1)
    same.load_state_dict(source.state_dict())
    assert len(same.state) == 1
