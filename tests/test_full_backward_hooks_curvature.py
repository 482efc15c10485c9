"""A module with a full backward hook (``register_full_backward_hook`` / ``_pre_hook``) puts torch's
``BackwardHookFunction`` in the graph, which torch.func's transforms cannot run: forward over reverse
and hvp='compiled' said "a custom autograd.Function without setup_context" at the first product, with
no word of the hook. They are refused naming the hook's module; double backprop, finite differences
and the Gauss-Newton operator measure such a model (the hook does nothing to the values)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import dense_hessian
from torch_features import compiles_under_func

import catapult


def _problem(pre: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    if pre:
        model[2].register_full_backward_pre_hook(lambda module, grad_out: None)
    else:
        model[2].register_full_backward_hook(lambda module, grad_in, grad_out: None)
    return model, (torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))


@pytest.mark.parametrize("pre", [False, True])
@pytest.mark.parametrize("hvp", ["forward_over_reverse", "compiled"])
def test_torch_func_products_name_the_hooked_module(hvp, pre):
    model, batch = _problem(pre)
    with pytest.raises(ValueError, match=f"hvp='{hvp}': module '2' has a full backward hook.*hvp='double_backprop'"):
        catapult.sharpness(model, nn.MSELoss(), batch, hvp=hvp)


def test_a_compiled_model_with_a_hook_is_told_the_modes_that_measure_it():
    model, batch = _problem()
    # where compiled modules keep their traced parameters (torch 2.2), every compiled model is
    # refused first, by that (catapult.curvature.modes.refuse_stale_compiled)
    told = ("module '_orig_mod.2' has a full backward hook.*'finite_difference'.*uncompiled" if compiles_under_func()
            else r"compile'd modules keep reading the parameters they were traced with.*_orig_mod")
    with pytest.raises(ValueError, match=told):
        catapult.sharpness(torch.compile(model), nn.MSELoss(), batch)


@pytest.mark.parametrize("hvp", ["double_backprop", "finite_difference"])
def test_reverse_mode_products_measure_a_hooked_model(hvp):
    model, batch = _problem()
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]
    assert catapult.sharpness(model, nn.MSELoss(), batch, hvp=hvp, tol=1e-9).value == pytest.approx(truth, rel=1e-7)


def test_the_message_names_the_module_with_the_full_hook_not_one_with_a_legacy_hook():
    import warnings

    from catapult.curvature.twice import full_backward_hooked

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # register_backward_hook is deprecated
        model[0].register_backward_hook(lambda *args: None)   # legacy: no BackwardHookFunction
    model[1].register_full_backward_hook(lambda *args: None)
    assert full_backward_hooked(model).startswith("module '1' has a full backward hook")
