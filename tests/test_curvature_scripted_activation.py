"""A model holding a TorchScript module without parameters or buffers (a scripted activation):
``functional_call`` swaps nothing in it, so double backprop, finite differences and
``critical_lr`` measure it (a4e1719 refused every such model), and so does the Gauss-Newton
operator (J v by differentiating a backward); torch.func's products (forward over reverse,
hvp='compiled') take its derivatives wrong and stay refused."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult


class _Act(nn.Module):
    def forward(self, x):
        return torch.tanh(x) * 1.5


def _models():
    torch.manual_seed(0)
    first, last = nn.Linear(5, 8).double(), nn.Linear(8, 3).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit is deprecated
        scripted = nn.Sequential(first, torch.jit.script(_Act()), last)
    batch = (torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64))
    return scripted, batch


def _dense_top(batch):
    """The top eigenvalue of the dense Hessian of the same loss, written out by hand (no module)."""
    model, _ = _models()
    params = [p.detach().clone() for p in model.parameters()]
    sizes = [p.numel() for p in params]
    x, y = batch

    def loss(flat):
        w1, b1, w2, b2 = (t.view_as(p) for t, p in zip(flat.split(sizes), params))
        out = (torch.tanh(x @ w1.T + b1) * 1.5) @ w2.T + b2
        return ((out - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    return float(np.linalg.eigvalsh(hessian.numpy())[-1])


@pytest.mark.parametrize("hvp", ["auto", "double_backprop", "finite_difference"])
def test_a_parameterless_scripted_module_is_measured_by_reverse_mode_products(hvp):
    # a4e1719 refused it ('the model is (or holds) a TorchScript module'); before that these modes
    # measured it right, as they do again
    model, batch = _models()
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, hvp=hvp, tol=1e-8)
    assert estimate.value == pytest.approx(_dense_top(batch), rel=1e-6)


def test_critical_lr_searches_a_model_with_a_parameterless_scripted_module():
    model, batch = _models()
    found = catapult.critical_lr(model, nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))
    # the bracket's upper end makes the loss rise after one SGD step, the lower end does not
    x, y = batch

    def step_loss(lr):
        trial, _ = _models()
        with torch.no_grad():
            loss0 = nn.MSELoss()(trial(x), y)
        loss = nn.MSELoss()(trial(x), y)
        grads = torch.autograd.grad(loss, list(trial.parameters()))
        with torch.no_grad():
            for p, g in zip(trial.parameters(), grads):
                p -= lr * g
            return float(nn.MSELoss()(trial(x), y)), float(loss0)

    after, before = step_loss(found.upper)
    assert after > before
    after, before = step_loss(found.lower)
    assert after <= before


@pytest.mark.parametrize("hvp", ["forward_over_reverse", "compiled"])
def test_torch_func_products_through_a_scripted_module_stay_refused(hvp):
    # measured before a4e1719: 1.2953 (forward over reverse) and 1.8008 (compiled) for 2.0723
    model, batch = _models()
    with pytest.raises(ValueError, match=f"hvp='{hvp}'.*TorchScript.*double_backprop"):
        catapult.sharpness(model, nn.MSELoss(), batch, hvp=hvp)


def test_a_scripted_module_with_parameters_stays_refused():
    model, batch = _models()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        holding = nn.Sequential(torch.jit.script(nn.Linear(5, 3).double()))
    with pytest.raises(ValueError, match="is \\(or holds\\) a TorchScript module.*pass the nn.Module"):
        catapult.sharpness(holding, nn.MSELoss(), batch, hvp="double_backprop")


def test_the_gauss_newton_operator_measures_a_parameterless_scripted_module():
    # refused by a4e1719 too; G = J^T (2 / (N C)) J for the mean squared error, J by hand
    model, batch = _models()
    values = catapult.top_eigenpairs(model, nn.MSELoss(), batch, k=2, curvature="ggn", tol=1e-8).values
    params = [p.detach().clone() for p in model.parameters()]
    sizes = [p.numel() for p in params]
    x, y = batch

    def outputs(flat):
        w1, b1, w2, b2 = (t.view_as(p) for t, p in zip(flat.split(sizes), params))
        return (torch.tanh(x @ w1.T + b1) * 1.5) @ w2.T + b2

    flat = torch.cat([p.reshape(-1) for p in params])
    jac = torch.autograd.functional.jacobian(outputs, flat).reshape(-1, sum(sizes))
    ggn = (2.0 / y.numel()) * jac.T @ jac
    top = np.linalg.eigvalsh(ggn.numpy())[::-1][:2]
    assert list(values) == pytest.approx(list(top), rel=1e-6)


# Mutation pass 22 (ST7): refuse_scripted itself, apart from the sharpness path's other checks


@pytest.mark.parametrize("mode", ["forward_over_reverse", "compiled"])
def test_refuse_scripted_refuses_both_torch_func_modes_for_a_parameterless_scripted_module(mode):
    from catapult.curvature.stateless import refuse_scripted

    model = nn.Sequential(nn.Linear(2, 2), torch.jit.script(_Act()))
    refuse_scripted("", model, "double_backprop")   # measured: no refusal
    with pytest.raises(ValueError, match=f"hvp='{mode}': the model holds a TorchScript module"):
        refuse_scripted("", model, mode)
