"""A ``torch.compile``'d model (which the operators differentiate forward over reverse, or by
``hvp='compiled'``): the graph the build walks once was one opaque compiled node, so a
``scatter_reduce(reduce="prod")`` inside (whose forward-mode derivative torch takes wrong) went
unseen, and the sharpness came out 25% low, converged. The walk's forward now runs the compiled code
eagerly (``modes.eager_stance``), so it sees what the uncompiled model's walk sees."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import catapult
from dense_curvature import dense_hessian
from test_missing_second_derivatives import ProductPool
from test_weight_norm_curvature import DirectCall, problem
from torch_features import needs_compile_under_func


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@needs_compile_under_func
def test_a_scatter_reduce_product_inside_a_compiled_model_is_seen():
    torch.manual_seed(0)
    model = ProductPool().double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]
    compiled = torch.compile(model)
    # before: hvp='auto' (forward over reverse for a compiled model) 25% low on a model like this, converged
    with pytest.raises(ValueError, match=r"hvp='forward_over_reverse': the loss goes through "
                                         r"scatter_reduce\(reduce='prod'\).*hvp='compiled' or 'finite_difference'"):
        catapult.sharpness(compiled, nn.MSELoss(), batch, tol=1e-9)
    for hvp in ("compiled", "finite_difference"):
        est = catapult.sharpness(compiled, nn.MSELoss(), batch, tol=1e-9, hvp=hvp)
        assert est.converged and est.value == pytest.approx(truth, rel=1e-8), hvp


@needs_compile_under_func
def test_a_weight_norm_called_inside_a_compiled_model_is_taken_by_parts():
    _, hand, batch = problem("parametrization", 0)
    truth = np.linalg.eigvalsh(dense_hessian(hand, F.cross_entropy, batch).numpy())[-1]
    compiled = torch.compile(DirectCall(hand, False))
    # before: torch's NotImplementedError (no forward AD of the fused op), renamed "use finite_difference"
    est = catapult.sharpness(compiled, F.cross_entropy, batch, tol=1e-10)
    assert est.converged and abs(est.value - truth) <= 1e-8 * truth


class TwoLayers(nn.Module):
    def __init__(self, activation=None):
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)
        self.activation = activation

    def forward(self, x):
        h = self.first(x)
        return self.second(self.activation(h) if self.activation is not None else torch.tanh(h) * 1.5)


def _two_layers(activation=None):
    torch.manual_seed(0)
    model = TwoLayers(activation).double()
    plain = TwoLayers().double()
    plain.load_state_dict(model.state_dict())
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    return model, plain, batch


@needs_compile_under_func
def test_a_model_compiled_in_place_is_measured_forward_over_reverse():
    # before: module.compile() was taken for an eager model, and the default double backprop raised torch's
    # RuntimeError "torch.compile with aot_autograd does not currently support double backward"
    model, plain, batch = _two_layers()
    model.compile()
    truth = np.linalg.eigvalsh(dense_hessian(plain, nn.MSELoss(), batch).numpy())[-1]
    est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10)
    assert est.converged and est.value == pytest.approx(truth, rel=1e-8)
    with pytest.raises(ValueError, match="hvp='double_backprop' cannot differentiate a torch.compile'd model twice"):
        catapult.sharpness(model, nn.MSELoss(), batch, hvp="double_backprop")
    with pytest.raises(ValueError, match="curvature='ggn' takes J v by differentiating a backward"):
        catapult.sharpness(model, nn.MSELoss(), batch, curvature="ggn")


@torch.compile
def _compiled_activation(h):
    return torch.tanh(h) * 1.5


@needs_compile_under_func
def test_a_compiled_function_in_the_forward_names_the_modes_that_measure_it():
    # a torch.compile'd function (no compiled module to see): torch's raw RuntimeError "torch.compile with
    # aot_autograd does not currently support double backward" from double backprop (micro-batches and
    # memory='lean' too), and from inside the Gauss-Newton operator's custom-Function check
    model, plain, batch = _two_layers(_compiled_activation)
    truth = np.linalg.eigvalsh(dense_hessian(plain, nn.MSELoss(), batch).numpy())[-1]
    for kwargs in ({}, {"chunk_size": 3}, {"memory": "lean"}):
        with pytest.raises(ValueError, match="hvp='double_backprop': the model runs torch.compile'd code.*"
                                             "hvp='forward_over_reverse' or 'finite_difference'"):
            catapult.sharpness(model, nn.MSELoss(), batch, **kwargs)
    with pytest.raises(ValueError, match="curvature='ggn' takes J v by differentiating a backward"):
        catapult.sharpness(model, nn.MSELoss(), batch, curvature="ggn")
    for hvp in ("forward_over_reverse", "finite_difference"):
        est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, hvp=hvp)
        assert est.value == pytest.approx(truth, rel=1e-8), hvp
