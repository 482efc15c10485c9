"""``nn.Embedding(scale_grad_by_freq=True)`` divides each row's gradient by its count in the batch
(not the loss's gradient: its Jacobian is not symmetric, and the sharpness came out 4% off the
loss's, converged), and ``sparse=True`` gives a sparse gradient (every product raised "reshape is
not implemented for sparse tensors", and critical_lr an error of the sparse backend). Neither
changes the forward: the curvature is the loss's, the same model's without the flags (truth)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dense_curvature import dense_hessian

import catapult


class Bag(nn.Module):
    def __init__(self, **flags):
        super().__init__()
        self.embed = nn.Embedding(7, 4, **flags)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens).mean(1)))


def problem(**flags):
    torch.manual_seed(1)
    model = Bag(**flags).double()
    torch.manual_seed(1)
    plain = Bag().double()
    torch.manual_seed(0)
    batch = (torch.randint(0, 7, (12, 3)), torch.randint(0, 3, (12,)))
    return model, plain, batch


FLAGS = [{"scale_grad_by_freq": True}, {"sparse": True}, {"scale_grad_by_freq": True, "sparse": True}]


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("hvp", ["double_backprop", "forward_over_reverse", "finite_difference"])
def test_curvature_is_the_losses(flags, hvp):
    model, plain, batch = problem(**flags)
    H = dense_hessian(plain, F.cross_entropy, batch).numpy()
    truth = np.linalg.eigvalsh(H)[::-1]
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-9, hvp=hvp)
    assert abs(est.value - truth[0]) <= 1e-8 * truth[0]
    eig = catapult.top_eigenpairs(model, F.cross_entropy, batch, k=3, tol=1e-9, hvp=hvp, chunk_size=5)
    np.testing.assert_allclose(eig.values, truth[:3], rtol=1e-8)
    assert catapult.hessian_trace(model, F.cross_entropy, batch, matvecs=50) == pytest.approx(np.trace(H), rel=1e-10)


def test_critical_lr_of_a_sparse_embedding_is_the_dense_ones():
    model, plain, batch = problem(sparse=True)
    got = catapult.critical_lr(model, F.cross_entropy, batch, torch.optim.SGD(model.parameters(), lr=0.1))
    want = catapult.critical_lr(plain, F.cross_entropy, batch, torch.optim.SGD(plain.parameters(), lr=0.1))
    assert (got.lr, got.lower, got.upper) == (want.lr, want.lower, want.upper)


@pytest.mark.parametrize("flags", [{"scale_grad_by_freq": True}, {"sparse": True}])
def test_compiled_products_are_the_losses_too(flags):
    """Compiled products went through the flags as well (0.4833 for 0.5121; a sparse gradient
    raised)."""
    model, plain, batch = problem(**flags)
    truth = np.linalg.eigvalsh(dense_hessian(plain, F.cross_entropy, batch).numpy())[-1]
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-9, hvp="compiled")
    assert abs(est.value - truth) <= 1e-8 * truth
