"""A custom ``autograd.Function`` without a ``backward`` in the forward: the loss has no gradient, so
no curvature mode measures it. The default mode said "torch has no second derivative of this model
... hvp='finite_difference' takes its products from gradients alone", and finite differences then
raised torch's raw NotImplementedError; every mode now says what is missing."""
from __future__ import annotations

import pytest
import torch

import catapult


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(2, 1)

    def forward(self, x):
        return NoBackward.apply(self.a(x))


@pytest.mark.parametrize("kwargs", [{}, {"hvp": "finite_difference"}, {"chunk_size": 2}])
def test_a_function_without_backward_is_named_and_no_mode_is_offered(kwargs):
    torch.manual_seed(0)
    batch = (torch.randn(4, 2), torch.randn(4, 1))
    with pytest.raises(ValueError, match="custom autograd.Function without a backward.*implement the Function's "
                                         "backward") as err:
        catapult.sharpness(Model(), torch.nn.MSELoss(), batch, **kwargs)
    assert "finite_difference' takes" not in str(err.value)
