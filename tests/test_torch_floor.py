"""What torch 2.2 (pyproject's floor, ``torch>=2.2``) lacks, emulated on the torch the suite runs
on: each test takes a feature away the way torch 2.2 does not have it and checks the answer
against independent truth (a dense Hessian). ``make test-floor`` runs the whole suite on a real
torch 2.2.2 (bench/RESULTS.md, "torch 2.2, the declared floor")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.autograd.graph import GradientEdge

import catapult
from catapult.curvature import grads_into
from dense_curvature import dense_hessian


@pytest.fixture
def backward_without_edge_outputs(monkeypatch):
    """``torch.autograd.backward`` as torch 2.2 has it: a GradientEdge as an output to
    differentiate is read as a tensor (``AttributeError: ... 'is_nested'``)."""
    real = torch.autograd.backward

    def backward(tensors, *args, **kwargs):
        seq = tensors if isinstance(tensors, (list, tuple)) else [tensors]
        if any(isinstance(t, GradientEdge) for t in seq):
            raise AttributeError("'GradientEdge' object has no attribute 'is_nested'")
        return real(tensors, *args, **kwargs)

    probe = getattr(grads_into, "edges_as_outputs", None)   # the probe's answer is cached
    clear = getattr(probe, "cache_clear", lambda: None)
    clear()
    monkeypatch.setattr(torch.autograd, "backward", backward)
    yield
    monkeypatch.undo()
    clear()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_lean_sharpness_without_gradient_edge_outputs_is_the_dense_top_eigenvalue(
        backward_without_edge_outputs, chunk_size):
    # torch 2.2: memory="lean" raised AttributeError for every model (the products backward from
    # the gradients' edges); it now backwards from the gradients themselves
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batch = (torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64))
    got = catapult.sharpness(model, nn.MSELoss(), batch, memory="lean", chunk_size=chunk_size, tol=1e-10)
    top = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]
    assert float(got.value) == pytest.approx(top, rel=1e-8)


def _adam_state(weight_decay, decoupled):
    """A torch Adam's state_dict after one step; ``decoupled=None``: without the
    ``decoupled_weight_decay`` entry, as torch 2.2's Adam and AdamW write it."""
    w = torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.Adam([w], lr=0.1, weight_decay=weight_decay)
    w.grad = torch.ones(3)
    adam.step()
    state = adam.state_dict()
    state["param_groups"][0].pop("decoupled_weight_decay", None)
    if decoupled is not None:
        state["param_groups"][0]["decoupled_weight_decay"] = decoupled
    return state


def test_a_torch_2_2_adam_state_with_weight_decay_is_not_taken_as_decoupled():
    # S: torch 2.2's Adam writes no decoupled_weight_decay, and GIAdam took its coupled L2 decay
    # of 0.5 as a decoupled one (lr * 0.5 per step): another optimizer, silently
    from catapult.optim import GIAdam

    ours = GIAdam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    before = str(ours.state_dict())
    with pytest.raises(ValueError, match=r"state_dict param group 0: .*weight_decay=0\.5 and no "
                                         r"decoupled_weight_decay .*'decoupled_weight_decay' to True"):
        ours.load_state_dict(_adam_state(0.5, None))
    assert str(ours.state_dict()) == before
    ours.load_state_dict(_adam_state(0.5, True))      # said decoupled (AdamW's): loads
    assert ours.param_groups[0]["weight_decay"] == 0.5
    fresh = GIAdam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    fresh.load_state_dict(_adam_state(0.0, None))    # no decay: nothing to tell apart, loads
    assert torch.equal(next(iter(fresh.state.values()))["exp_avg_sq"], torch.full((3,), 0.001))
    fresh.load_state_dict(fresh.state_dict())        # GIAdam's own state never had the entry
