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


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-160, 1e160, 1e200, 1e300])
def test_the_pair_is_numpys_dense_eigh_at_any_scale(scale):
    # LAPACK's stebz works with the off-diagonal's squares: past ~1e154 it raised LinAlgError ("did
    # not converge") or gave a nan vector, below ~1e-154 it gave 2.0 * scale for 2.6485 * scale
    rng = np.random.default_rng(3)
    alphas, betas = rng.standard_normal(12), np.abs(rng.standard_normal(11))
    values, vectors = np.linalg.eigh(dense(alphas, betas))   # at scale 1: the truth, scaled
    theta, s, lowest = tridiagonal_top_pair(alphas * scale, betas * scale)
    eps = np.finfo(np.float64).eps
    norm = np.abs(values).max()
    assert abs(theta / scale - values[-1]) <= 96 * eps * norm
    assert abs(lowest / scale - values[0]) <= 96 * eps * norm
    reference = vectors[:, -1] * np.sign(vectors[np.argmax(np.abs(vectors[:, -1])), -1])
    assert np.abs(s - reference).max() <= 1e-10


def test_the_lean_solver_at_a_curvature_of_1e_minus_160_is_the_dense_top():
    # a float64 operator of norm ~1e-160 (a loss near 0: the Hessian's scale): its Ritz pairs were
    # wrong (stebz below 1e-154), and the solver spent max_iter=500 unconverged at 0.204 of the top
    # (the dense path's solver converged in 60 products)
    g = torch.Generator().manual_seed(0)
    b = torch.randn(30, 30, generator=g, dtype=torch.float64)
    a = (b + b.T) / 2 * 1e-160
    top = float(np.linalg.eigvalsh((a * 1e160).numpy())[-1]) * 1e-160
    est = lean_top_eigenpair(lambda v: a @ v, torch.ones(30, dtype=torch.float64), tol=1e-8, max_iter=500)
    assert est.converged and est.matvecs < 500
    assert abs(est.value - top) <= 1e-6 * abs(top)


def test_a_zero_diagonal_is_scaled_by_its_off_diagonal():
    # T = [[0, b, 0], [b, 0, b], [0, b, 0]] with b = 1e200: eigenvalues -sqrt(2) b, 0, sqrt(2) b;
    # the scale is the largest entry of either diagonal (the main one alone is 0 here)
    theta, s, lowest = tridiagonal_top_pair([0.0, 0.0, 0.0], [1e200, 1e200])
    assert theta == pytest.approx(np.sqrt(2) * 1e200, rel=1e-14) and lowest == pytest.approx(-np.sqrt(2) * 1e200, rel=1e-14)
    np.testing.assert_allclose(s, [0.5, np.sqrt(0.5), 0.5], rtol=1e-12)
