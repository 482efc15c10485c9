"""lean_top_eigenpair's Ritz pair comes from the tridiagonal T_m's diagonals (O(m) a step), not
from a dense eigh of the m x m matrix (O(m^3) a step): the pair against numpy.linalg.eigh of the
same dense matrix, and the solver's results against the same solver on the dense path."""
import numpy as np
import pytest
import torch

from catapult.curvature import lean
from catapult.curvature.lanczos import tridiagonal_top_pair
from catapult.curvature.lean import lean_top_eigenpair


def dense(alphas, betas):
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


def tridiagonals():
    rng = np.random.default_rng(7)
    for m in (1, 2, 3, 10, 57, 200):
        yield rng.standard_normal(m), rng.standard_normal(m - 1)            # signs of both kinds
        yield rng.uniform(0, 1e-6, m), np.abs(rng.standard_normal(m - 1))   # Lanczos-like, beta > 0
    # graded: a wide spectrum (1e-8 .. 1e4), as Hessians have
    yield np.geomspace(1e-8, 1e4, 40), np.full(39, 1e-3)
    # a top eigenvalue split from the next by 1e-3 of the norm
    yield np.array([5.0, 5.005, 1.0, -2.0]), np.array([1e-6, 0.0, 0.5])


@pytest.mark.parametrize("alphas, betas", list(tridiagonals()))
def test_the_pair_is_numpys_dense_eigh_to_rounding(alphas, betas):
    values, vectors = np.linalg.eigh(dense(alphas, betas))
    theta, s, lowest = tridiagonal_top_pair(alphas, betas)
    norm = np.abs(values).max()
    eps = np.finfo(np.float64).eps
    m = len(alphas)
    assert abs(theta - values[-1]) <= 8 * m * eps * norm
    assert abs(lowest - values[0]) <= 8 * m * eps * norm
    reference = vectors[:, -1] * np.sign(vectors[np.argmax(np.abs(vectors[:, -1])), -1])
    gap = values[-1] - values[-2] if m > 1 else norm
    assert s.shape == (m,) and abs(np.linalg.norm(s) - 1) <= 16 * eps
    assert np.abs(s - reference).max() <= 64 * m * eps * norm / gap
    # its own definition: T s = theta s
    assert np.abs(dense(alphas, betas) @ s - theta * s).max() <= 16 * m * eps * norm


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="m - 1 off-diagonal"):
        tridiagonal_top_pair([1.0, 2.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="m >= 1"):
        tridiagonal_top_pair([], [])


def dense_top_pair(alphas, betas):
    """The dense path lean_top_eigenpair took before: numpy's eigh of the m x m T_m."""
    values, vectors = np.linalg.eigh(dense(np.asarray(alphas), np.asarray(betas)))
    s = vectors[:, -1]
    return float(values[-1]), s * np.sign(s[np.argmax(np.abs(s))]), float(values[0])


def spectrum_operator(n=300, seed=0):
    """A symmetric 300 x 300 matrix with a known spectrum (top 10, next 9.9: slow Lanczos)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = torch.cat([torch.tensor([10.0, 9.9]), torch.linspace(-3.0, 9.0, n - 2, dtype=torch.float64)])
    A = Q @ torch.diag(eigenvalues) @ Q.T
    return A, Q[:, 0], torch.randn(n, generator=g, dtype=torch.float64)


def test_lean_top_eigenpair_runs_no_dense_eigh(monkeypatch):
    A, top_vector, v0 = spectrum_operator()
    calls = []
    real = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda *a, **k: calls.append(1) or real(*a, **k))
    est = lean_top_eigenpair(lambda v: A @ v, v0, tol=1e-10, max_iter=600)
    assert calls == []
    assert est.converged and abs(est.value - 10.0) <= 1e-9
    assert abs(abs(float(est.vector @ top_vector)) - 1) <= 1e-9


@pytest.mark.parametrize("tol, max_iter", [(1e-10, 600), (1e-6, 60), (1e-12, 800)])
def test_lean_top_eigenpair_equals_the_dense_path(monkeypatch, tol, max_iter):
    A, _, v0 = spectrum_operator(seed=1)
    fast = lean_top_eigenpair(lambda v: A @ v, v0, tol=tol, max_iter=max_iter)
    monkeypatch.setattr(lean, "tridiagonal_top_pair", dense_top_pair)
    slow = lean_top_eigenpair(lambda v: A @ v, v0, tol=tol, max_iter=max_iter)
    assert fast.matvecs == slow.matvecs and fast.converged == slow.converged
    assert abs(fast.value - slow.value) <= 1e-12 * 10
    assert abs(fast.residual - slow.residual) <= 1e-10 * max(fast.residual, 1e-3)
    assert torch.allclose(fast.vector, slow.vector, rtol=0, atol=1e-10)
