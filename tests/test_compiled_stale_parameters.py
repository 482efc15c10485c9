"""A ``torch.compile``'d model measured at other parameters: every measurement runs the model
through ``torch.func.functional_call`` with substituted parameters, and torch 2.2.2's compiled
modules kept reading the ones they were traced with. A compiled model's ``hvp='finite_difference'``
sharpness came out 0.0, converged (gradients at ``theta +- eps v`` were both the traced one's), with
``memory='lean'`` too, and its critical lr 2.9e17 (2.125 uncompiled); ``chunk_size`` raised torch's
raw RuntimeError. catapult now refuses such a model on such a torch, naming the torch and the way out
(``catapult.curvature.modes.refuse_stale_compiled``)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import catapult
from catapult.curvature import modes
from dense_curvature import dense_hessian
from torch_features import compiles_under_func


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    return model, batch


def _measurements(model, batch):
    loss_fn = nn.MSELoss()
    yield "sharpness", lambda: catapult.sharpness(model, loss_fn, batch, tol=1e-10, hvp="finite_difference").value
    yield "lean", lambda: catapult.sharpness(model, loss_fn, batch, tol=1e-10, hvp="finite_difference",
                                             memory="lean").value
    yield "chunks", lambda: catapult.sharpness(model, loss_fn, batch, tol=1e-10, hvp="finite_difference",
                                               chunk_size=3).value
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    yield "critical_lr", lambda: catapult.critical_lr(model, loss_fn, batch, optimizer, lr_start=1 / 64).lr


@pytest.mark.parametrize("traced", [False, True])
def test_a_compiled_model_is_measured_as_the_uncompiled_one_or_refused(traced):
    # 2.2.2 before: not traced, the sharpness 0.0 (lean too) and chunks torch's RuntimeError; traced
    # first, the substituted parameters were taken for references held from before the call
    model, batch = _problem()
    truth = {"sharpness": np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]}
    truth["lean"] = truth["chunks"] = truth["sharpness"]
    # the critical lr's truth: the uncompiled model's, whose bisection the tests of critical_lr check
    truth["critical_lr"] = dict(_measurements(model, batch))["critical_lr"]()
    compiled = torch.compile(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if traced:
            compiled(batch[0])                  # at the model's own parameters
        for name, measure in _measurements(compiled, batch):
            try:
                value = measure()
            except ValueError as refusal:       # never a number taken at the traced parameters
                assert not compiles_under_func(), name
                assert f"torch {torch.__version__}'s torch.compile'd modules keep reading" in str(refusal), name
                continue
            assert value == pytest.approx(truth[name], rel=1e-6), name


def test_a_torch_whose_compiled_modules_keep_their_traced_parameters_is_refused_before_any_forward(monkeypatch):
    # torch 2.13 follows the substituted parameters: its probe is replaced by 2.2.2's answer
    monkeypatch.setattr(modes, "_compiled_modules_follow_substitutes", lambda: False)
    model, batch = _problem()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    for name, measure in _measurements(model, batch):   # an uncompiled model: nothing to refuse
        assert measure() > 0, name
    compiled = torch.compile(model)
    calls.clear()
    for name, measure in _measurements(compiled, batch):
        with pytest.raises(ValueError, match=r"keep reading the parameters they were traced with.*_orig_mod"):
            measure()
        assert not calls, name
    model.compile()                                      # compiled in place
    with pytest.raises(ValueError, match="torch.compile'd modules keep reading"):
        catapult.sharpness(model, nn.MSELoss(), batch, hvp="finite_difference")
