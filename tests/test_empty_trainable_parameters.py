"""A model whose trainable parameters all have 0 entries (the rest frozen) is refused by every curvature
function with a ValueError naming them, before any solve: the solvers' "v0 must be a non-empty 1-D tensor,
got shape (0,)" came out, naming no argument of the caller, and with ``memory="lean"`` lean_sizes'
ZeroDivisionError; a model with no trainable parameter at all met an IndexError there."""
import pytest
import torch

import catapult


class EmptyTrainable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2).requires_grad_(False)
        self.empty = torch.nn.Parameter(torch.zeros(0, 4))

    def forward(self, x):
        return self.lin(x) + self.empty.sum()


@pytest.mark.parametrize("call", ["sharpness", "lean", "ggn", "preconditioned", "top_eigenpairs", "lean_top_k",
                                  "trace", "tracker"])
def test_a_model_with_only_empty_trainable_parameters_is_refused_by_name(call):
    model = EmptyTrainable()
    batch = (torch.randn(4, 3), torch.randn(4, 2))
    loss_fn = torch.nn.MSELoss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"trainable parameters \['empty'\] have 0 entries"):
        if call == "sharpness":
            catapult.sharpness(model, loss_fn, batch)
        elif call == "lean":
            catapult.sharpness(model, loss_fn, batch, memory="lean")
        elif call == "ggn":
            catapult.sharpness(model, loss_fn, batch, curvature="ggn")
        elif call == "preconditioned":
            catapult.preconditioned_sharpness(model, loss_fn, batch, torch.optim.Adam([model.empty]))
        elif call == "top_eigenpairs":
            catapult.top_eigenpairs(model, loss_fn, batch, k=1)
        elif call == "lean_top_k":
            catapult.top_eigenpairs(model, loss_fn, batch, k=1, memory="lean")
        elif call == "trace":
            catapult.hessian_trace(model, loss_fn, batch)
        else:
            catapult.SharpnessTracker(model, loss_fn).step(batch)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("call", ["sharpness", "top_eigenpairs"])
def test_lean_memory_on_a_model_with_nothing_trainable_is_refused_as_the_fast_setting_refuses_it(call):
    model = torch.nn.Linear(3, 2).requires_grad_(False)
    batch = (torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="model has no parameters with requires_grad=True"):
        if call == "sharpness":
            catapult.sharpness(model, torch.nn.MSELoss(), batch, memory="lean")
        else:
            catapult.top_eigenpairs(model, torch.nn.MSELoss(), batch, k=1, memory="lean")
