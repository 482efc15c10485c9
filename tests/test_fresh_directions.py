"""Fresh directions of the top-k solver (a block's extra start vectors, and where the Krylov
space closes) against dense float64 truth, with the default ``seed=0`` on the CPU, whose
first fresh direction used to be the start vector itself."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import dense_hessian

import catapult
from catapult.curvature.krylov import KrylovBasis


def test_a_fresh_direction_in_the_basis_span_is_drawn_again():
    # the start vector of seed 0 (CPU, float64) is the first draw of fresh_direction(0)
    v0 = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    basis = KrylovBasis(v0)
    basis.append(v0 / torch.linalg.vector_norm(v0))
    w = basis.fresh_direction(0)
    assert torch.isfinite(w).all()
    assert float(torch.linalg.vector_norm(w)) == pytest.approx(1.0, abs=1e-12)
    assert abs(float(basis.row(0) @ w)) < 1e-12


def test_a_fresh_direction_is_refused_where_the_basis_spans_the_space():
    basis = KrylovBasis(torch.zeros(2, dtype=torch.float64))
    basis.append(torch.tensor([1.0, 0.0], dtype=torch.float64))
    basis.append(torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="spans the space"):
        basis.fresh_direction(0)


def test_top_eigenpairs_past_the_rank_with_the_default_seed():
    # rank 2 (two samples, one output), 6 parameters: k = 4 needs a fresh direction once the
    # Krylov space closes; it returned [5.58, 2.20, 1.73, 1.43] with converged=True
    torch.manual_seed(0)
    model = nn.Linear(6, 1, bias=False).double()
    batch = (torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float64))
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[::-1]
    eig = catapult.top_eigenpairs(model, nn.MSELoss(), batch, k=4)
    assert eig.converged
    np.testing.assert_allclose(eig.values, truth[:4], atol=1e-9)


@pytest.mark.parametrize("block_size", [2, 3])
def test_block_top_eigenpairs_with_the_default_seed_match_dense(block_size):
    # the block's second start vector was the first one's rounding residue: nan after 2 products
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Tanh(), nn.Linear(2, 1)).double()
    batch = (torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64))
    H = dense_hessian(model, nn.MSELoss(), batch)
    truth = np.linalg.eigvalsh(H.numpy())[::-1]
    eig = catapult.top_eigenpairs(model, nn.MSELoss(), batch, k=4, tol=1e-8,
                                  block_size=block_size)
    assert eig.converged
    np.testing.assert_allclose(eig.values, truth[:4], atol=1e-9)
    V = eig.vectors
    np.testing.assert_allclose((V @ V.T).numpy(), np.eye(4), atol=1e-9)
    residual = torch.linalg.vector_norm(V @ H - torch.tensor(eig.values)[:, None] * V, dim=1)
    assert float(residual.max()) < 1e-6
