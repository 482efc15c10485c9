"""A ``@torch.jit.script`` function (not a module: nothing in the model's tree to see) called in a
model's forward. Once its executor has profiled a call, TorchScript runs it as one differentiable
graph whose backward is its own node, which forward-mode AD does not pass through: forward over
reverse gave 1.1782 for the dense Hessian's 2.1516, converged, whether the function was fresh
(the build's own forward was its profiling call) or settled by earlier calls, and so did a
``torch.compile``'d model calling it (hvp='auto' and hvp='compiled' alike), and hvp='compiled' on
the model uncompiled wherever it ran eagerly (1.0740). Those are refused, naming the modes that
measure it: double backprop, finite differences (and the Gauss-Newton operator)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult


def _scripted():
    """A fresh scripted function (its own executor: no call profiled yet)."""
    def act(x):
        return torch.tanh(x) * x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit is deprecated
        return torch.jit.script(act)


class _Model(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act = act.__call__   # a bound method: no submodule, no ScriptModule in the tree
        self.first, self.last = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.last(self.act(self.first(x)))


def _setup(settled: bool):
    torch.manual_seed(0)
    model = _Model(_scripted()).double()
    batch = (torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))
    if settled:   # a user's training steps: the executor has profiled and optimized the function
        for _ in range(3):
            nn.MSELoss()(model(batch[0]), batch[1]).backward()
        model.zero_grad()
    return model, batch


def _dense(model, batch, ggn: bool = False):
    """The top eigenvalue of the dense Hessian (or G = J^T (2 / NC) J) of the same loss, written out."""
    params = [p.detach().clone() for p in model.parameters()]
    sizes = [p.numel() for p in params]
    x, y = batch

    def outputs(flat):
        w1, b1, w2, b2 = (t.view_as(p) for t, p in zip(flat.split(sizes), params))
        h = x @ w1.T + b1
        return (torch.tanh(h) * h) @ w2.T + b2

    flat = torch.cat([p.reshape(-1) for p in params])
    if ggn:
        jac = torch.autograd.functional.jacobian(outputs, flat).reshape(-1, flat.numel())
        matrix = (2.0 / y.numel()) * jac.T @ jac
    else:
        matrix = torch.autograd.functional.hessian(lambda f: ((outputs(f) - y) ** 2).mean(), flat)
    return float(np.linalg.eigvalsh(matrix.numpy())[-1])


@pytest.mark.parametrize("hvp", ["forward_over_reverse", "compiled"])
@pytest.mark.parametrize("settled", [False, True])
def test_torch_func_products_through_a_scripted_function_are_refused(hvp, settled):
    # measured before: forward over reverse 1.1782 for 2.1516 (fresh and settled alike), converged;
    # hvp='compiled' 1.0740 where torch.compile had failed in the process and it ran eagerly
    model, batch = _setup(settled)
    with pytest.raises(ValueError, match=f"hvp='{hvp}'.*TorchScript function.*hvp='double_backprop'"):
        catapult.sharpness(model, nn.MSELoss(), batch, hvp=hvp)


@pytest.mark.parametrize("hvp", ["auto", "compiled"])
def test_a_compiled_model_calling_a_scripted_function_is_refused(hvp):
    # measured before: 1.0740 (fresh) / 1.1782 and 1.7326 (settled) for 2.1516
    from torch_features import compiles_under_func

    model, batch = _setup(settled=False)
    # torch 2.2.2 refuses any compiled model first (its compiled modules keep their traced parameters)
    words = ("TorchScript function.*'finite_difference'.*uncompiled" if compiles_under_func() else
             "torch.compile'd modules keep reading the parameters they were traced with.*uncompiled")
    with pytest.raises(ValueError, match=words):
        catapult.sharpness(torch.compile(model), nn.MSELoss(), batch, hvp=hvp)


@pytest.mark.parametrize("hvp", ["double_backprop", "finite_difference"])
@pytest.mark.parametrize("settled", [False, True])
def test_reverse_mode_products_measure_a_scripted_function(hvp, settled):
    model, batch = _setup(settled)
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, hvp=hvp, tol=1e-9)
    assert estimate.value == pytest.approx(_dense(model, batch), rel=1e-6)


def test_the_gauss_newton_operator_measures_a_scripted_function():
    model, batch = _setup(settled=True)
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, curvature="ggn", tol=1e-9)
    assert estimate.value == pytest.approx(_dense(model, batch, ggn=True), rel=1e-6)


def test_a_scripted_function_in_the_loss_is_refused_too():
    model, batch = _setup(settled=False)
    act = _scripted()
    with pytest.raises(ValueError, match="hvp='forward_over_reverse': the model \\(or loss_fn\\) calls a TorchScript"):
        catapult.sharpness(model, lambda out, y: act(out - y).mean(), batch, hvp="forward_over_reverse")
