"""Forward-over-reverse products through a custom ``torch.autograd.Function``: they take its own
forward-mode rule (``jvp``), which nothing checked (one off by half left the sharpness 9% low,
converged); and a Function computing in NumPy raised torch.func's raw "Cannot access data pointer
of Tensor that doesn't have storage"."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import catapult
from dense_curvature import dense_hessian


def _tanh_function(jvp_factor: float):
    class Tanh(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return torch.tanh(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)
            ctx.save_for_forward(output)

        @staticmethod
        def backward(ctx, grad):
            out, = ctx.saved_tensors
            return grad * (1 - out ** 2)

        @staticmethod
        def jvp(ctx, tangent):
            out, = ctx.saved_tensors
            return tangent * (1 - out ** 2) * jvp_factor

    return Tanh


class NumpyTanh(_tanh_function(1.0)):
    """The exact tanh Function's context and jvp (without one, torch's "You must implement the
    jvp function" was named already), with a forward and backward through NumPy."""
    @staticmethod
    def forward(x):
        return torch.from_numpy(np.tanh(x.detach().numpy()))

    @staticmethod
    def backward(ctx, grad):
        out, = ctx.saved_tensors
        return grad * torch.from_numpy(1 - out.detach().numpy() ** 2)


class Net(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.first, self.second, self.act = nn.Linear(5, 6), nn.Linear(6, 3), act

    def forward(self, x):
        return self.second(self.act(self.first(x)))


def _problem(act):
    torch.manual_seed(0)
    reference = Net(torch.tanh).double()
    model = Net(act).double()
    model.load_state_dict(reference.state_dict())
    batch = (torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,)))
    return model, np.linalg.eigvalsh(dense_hessian(reference, F.cross_entropy, batch).numpy())[-1], batch


def test_a_wrong_jvp_rule_is_refused_under_forward_over_reverse():
    model, truth, batch = _problem(_tanh_function(0.5).apply)
    with pytest.raises(ValueError, match="custom autograd.Function Tanh, whose second derivatives "
                                         "hvp='forward_over_reverse' takes wrong here.*hvp='double_backprop'"):
        catapult.sharpness(model, F.cross_entropy, batch, hvp="forward_over_reverse")
    for hvp in ("double_backprop", "finite_difference"):
        est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, hvp=hvp)
        assert est.value == pytest.approx(truth, rel=1e-8), hvp


def test_a_right_jvp_rule_passes_the_check():
    model, truth, batch = _problem(_tanh_function(1.0).apply)
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, hvp="forward_over_reverse")
    assert est.converged and est.value == pytest.approx(truth, rel=1e-8)


def test_a_numpy_function_names_the_modes_that_measure_it():
    model, truth, batch = _problem(NumpyTanh.apply)
    with pytest.raises(ValueError, match="hvp='forward_over_reverse': torch.func cannot run this model's forward.*"
                                         "'finite_difference'") as info:
        catapult.sharpness(model, F.cross_entropy, batch, hvp="forward_over_reverse")
    assert isinstance(info.value.__cause__, RuntimeError)
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, hvp="finite_difference")
    assert est.value == pytest.approx(truth, rel=1e-8)
