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
