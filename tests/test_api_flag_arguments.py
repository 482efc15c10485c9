"""The curvature entry points' on/off arguments (``distributed``, ``scale_by_group_lr``) and
``memory`` of the wrong kind. Python's truthiness took ``scale_by_group_lr="no"`` as True (a
silently scaled sharpness: 106 instead of 290 on the model below), ``[]`` as False, and
``distributed=1`` ran distributed without the ranks' same-call checks (they looked for ``True``
itself); ``memory=[]`` raised "unhashable type: 'list'", naming no argument."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature import rank_agreement
from catapult.curvature.distributed import single_process_group

with torch.random.fork_rng():  # the global RNG of the tests collected after this one is left alone
    torch.manual_seed(0)
    X, Y = torch.randn(8, 3), torch.randn(8, 2)
    MODEL = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
MSE = nn.MSELoss()


def _adam():
    return torch.optim.Adam([{"params": MODEL[0].parameters(), "lr": 0.1},
                             {"params": MODEL[2].parameters(), "lr": 0.001}])


CALLS = {
    "sharpness": lambda **k: catapult.sharpness(MODEL, MSE, (X, Y), **k),
    "preconditioned_sharpness": lambda **k: catapult.preconditioned_sharpness(MODEL, MSE, (X, Y), _adam(), **k),
    "top_eigenpairs": lambda **k: catapult.top_eigenpairs(MODEL, MSE, (X, Y), k=2, optimizer=_adam(), **k),
    "hessian_trace": lambda **k: catapult.hessian_trace(MODEL, MSE, (X, Y), matvecs=4, optimizer=_adam(), **k),
    "spectral_density": lambda **k: catapult.spectral_density(MODEL, MSE, (X, Y), runs=1, steps=3,
                                                              optimizer=_adam(), **k),
    "critical_lr": lambda **k: catapult.critical_lr(MODEL, MSE, (X, Y), _adam(), **k),
}
FLAGGED = [(name, flag) for name in CALLS for flag in ("distributed", "scale_by_group_lr")
           if not (flag == "scale_by_group_lr" and name in ("sharpness", "critical_lr"))]


@pytest.mark.parametrize("name, flag", FLAGGED)
@pytest.mark.parametrize("value", ["no", [], {}, 2, 0.0, torch.tensor([True, False])])
def test_a_flag_that_is_not_a_bool_is_refused_naming_it(name, flag, value):
    with pytest.raises(TypeError, match=rf"{name}: {flag} must be True or False"):
        CALLS[name](**{flag: value})


def test_scale_by_group_lr_accepts_bool_likes_as_their_bool():
    measure = lambda s: catapult.preconditioned_sharpness(MODEL, MSE, (X, Y), _adam(), tol=1e-8,
                                                         scale_by_group_lr=s).value
    scaled, plain = measure(True), measure(False)
    assert abs(scaled - plain) > 1.0          # the groups' lrs differ 100x: the flag matters
    assert measure(1) == measure(np.True_) == scaled
    assert measure(0) == measure(np.False_) == plain


def test_distributed_one_runs_the_ranks_same_call_checks(monkeypatch):
    seen = []
    real = rank_agreement.check_same_call
    monkeypatch.setattr(rank_agreement, "check_same_call",
                        lambda name, arguments: (seen.append(arguments["distributed"]), real(name, arguments)))
    with single_process_group():
        one = catapult.sharpness(MODEL, MSE, (X, Y), distributed=1).value
    assert seen == [True]
    assert abs(one - catapult.sharpness(MODEL, MSE, (X, Y)).value) < 1e-4


@pytest.mark.parametrize("name", ["sharpness", "preconditioned_sharpness", "top_eigenpairs"])
@pytest.mark.parametrize("value", [[], {}, None])
def test_memory_of_another_kind_is_refused_naming_it(name, value):
    with pytest.raises(ValueError, match="memory must be one of"):
        CALLS[name](memory=value)
