"""The Lanczos step shared by the single and the batched solver, against NumPy re-derivations:
the tridiagonal matrix and its eigenpairs (``numpy.linalg.eigh``), the residual identity
``||A v - theta v|| = |beta_m s_m|`` on an explicit Krylov basis, and a thick restart whose
projected matrix is ``Y^T A Y`` of the restarted basis and keeps the Ritz pairs exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import catapult.curvature.lanczos as lanczos_module
from catapult.curvature.lanczos import (
    batched_lanczos,
    krylov_invariant,
    lanczos_top_eigenpair,
    relative_residual,
    restart_sizes,
    ritz_pairs,
    stop_test,
    thick_restart,
    top_ritz_pair,
    tridiagonal_update,
)
from catapult.curvature.top_k import lanczos_top_k
from dense_curvature import long_float32_diagonal


def random_symmetric(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n))
    return (x + x.T) / 2


def numpy_lanczos(A: np.ndarray, q0: np.ndarray, steps: int):
    """Plain Lanczos with full re-orthogonalisation, written in NumPy for these tests:
    returns Q (rows q_0..q_steps), alphas, betas with A q_j = b_{j-1} q_{j-1} + a_j q_j + b_j q_{j+1}."""
    Q = [q0 / np.linalg.norm(q0)]
    alphas, betas = [], []
    for j in range(steps):
        w = A @ Q[j]
        alphas.append(float(Q[j] @ w))
        B = np.array(Q)
        w = w - B.T @ (B @ w)
        w = w - B.T @ (B @ w)  # twice is enough
        betas.append(float(np.linalg.norm(w)))
        Q.append(w / betas[-1])
    return np.array(Q), np.array(alphas), np.array(betas)


def tridiagonal(alphas, betas) -> np.ndarray:
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


def test_restart_sizes():
    assert restart_sizes(20, 1000) == (20, 10)
    assert restart_sizes(20, 7) == (7, 3)
    assert restart_sizes(3, 100) == (3, 1)
    assert restart_sizes(2, 100) == (2, 1)


def test_tridiagonal_update_builds_the_tridiagonal_matrix_and_leaves_its_input():
    rng = np.random.default_rng(0)
    alphas, betas = rng.standard_normal(6), rng.random(6)
    T = np.zeros((6, 6))
    for j in range(6):
        previous, snapshot = T, T.copy()
        T = tridiagonal_update(previous, j, alphas[j], betas[j])
        np.testing.assert_array_equal(previous, snapshot)  # a new array; the input is unchanged
        # after step j the leading (j+1) block is tridiag(alpha_0..j, beta_0..j-1), coupled to j+1
        np.testing.assert_array_equal(T[: j + 1, : j + 1], tridiagonal(alphas[: j + 1], betas[:j]))
        if j + 1 < 6:
            assert T[j + 1, j] == T[j, j + 1] == betas[j]
    # the last step has no room for beta_5: T is exactly the 6x6 tridiagonal matrix
    np.testing.assert_array_equal(T, tridiagonal(alphas, betas[:5]))


def test_tridiagonal_update_batched_equals_one_operator_at_a_time():
    rng = np.random.default_rng(1)
    m, cap = 3, 5
    alphas, betas = rng.standard_normal((cap, m)), rng.random((cap, m))
    batched = np.zeros((m, cap, cap))
    singles = [np.zeros((cap, cap)) for _ in range(m)]
    for j in range(cap):
        batched = tridiagonal_update(batched, j, alphas[j], betas[j])
        singles = [tridiagonal_update(T, j, alphas[j, k], betas[j, k]) for k, T in enumerate(singles)]
    np.testing.assert_array_equal(batched, np.stack(singles))


@pytest.mark.parametrize("size", [1, 2, 5, 9])
def test_ritz_pairs_are_the_eigenpairs_of_the_leading_block(size):
    rng = np.random.default_rng(size)
    alphas, betas = rng.standard_normal(9), rng.random(9)
    T = np.zeros((9, 9))
    for j in range(9):
        T = tridiagonal_update(T, j, alphas[j], betas[j])
    values, vectors = ritz_pairs(T, size)
    block = tridiagonal(alphas[:size], betas[: size - 1])
    np.testing.assert_allclose(values, np.linalg.eigvalsh(block), rtol=0, atol=1e-12)
    assert np.all(np.diff(values) >= 0)  # ascending
    np.testing.assert_allclose(block @ vectors, vectors * values, atol=1e-12)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(size), atol=1e-12)
    theta, s = top_ritz_pair(values, vectors)
    assert theta == pytest.approx(np.linalg.eigvalsh(block).max(), rel=1e-12, abs=0)
    np.testing.assert_allclose(block @ s, theta * s, atol=1e-12)
    # batched over a leading dimension: the same pairs per operator
    bv, bV = ritz_pairs(np.stack([T, 2 * T]), size)
    np.testing.assert_allclose(bv[1], 2 * values, atol=1e-12)
    np.testing.assert_allclose(np.abs(bV[0]), np.abs(vectors), atol=1e-12)


def test_lanczos_ritz_values_of_a_full_basis_are_the_eigenvalues():
    A = random_symmetric(8, seed=2)
    Q, alphas, betas = numpy_lanczos(A, np.ones(8), 8)
    T = np.zeros((8, 8))
    for j in range(8):
        T = tridiagonal_update(T, j, alphas[j], betas[j])
    np.testing.assert_allclose(T, Q[:8] @ A @ Q[:8].T, atol=1e-9)
    values, _ = ritz_pairs(T, 8)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(A), atol=1e-9)


@pytest.mark.parametrize("m", [2, 4, 7])
def test_relative_residual_is_the_true_eigen_residual(m):
    A = random_symmetric(30, seed=3)
    Q, alphas, betas = numpy_lanczos(A, np.random.default_rng(4).standard_normal(30), m)
    values, vectors = ritz_pairs(tridiagonal(alphas, betas[: m - 1]), m)
    theta, s = top_ritz_pair(values, vectors)
    v = Q[:m].T @ s
    true_rel = np.linalg.norm(A @ v - theta * v) / abs(theta)
    assert relative_residual(betas[m - 1], s[-1], theta) == pytest.approx(true_rel, rel=1e-9)


def test_relative_residual_closed_forms():
    assert relative_residual(2.0, -0.5, 4.0) == 0.25
    assert relative_residual(2.0, 0.5, -4.0) == 0.25
    assert relative_residual(0.0, 0.3, 0.0) == 0.0
    assert relative_residual(1.0, 0.3, 0.0) == math.inf


def test_stop_test_and_invariance():
    eps = float(np.finfo(np.float64).eps)
    values, s = np.array([-1.0, 2.0, 4.0]), np.array([0.0, 0.6, 0.8])
    # rel = |0.5 * 0.8| / 4 = 0.1
    assert stop_test(0.5, values, s, tol=0.1, n=100, eps=eps) == (True, 0.1)
    assert stop_test(0.5, values, s, tol=0.0999, n=100, eps=eps) == (False, 0.1)
    # invariant: beta at rounding level of the spectrum (scale 4, m = 3 Ritz values) -> converged
    # whatever tol
    tiny = 10 * eps * 4.0 * math.sqrt(3)
    assert krylov_invariant(tiny, values, 100, eps) and not krylov_invariant(2 * tiny, values, 100, eps)
    assert stop_test(tiny, values, s, tol=1e-300, n=100, eps=eps)[0]
    # a basis spanning R^n is invariant whatever beta
    assert krylov_invariant(1.0, values, 3, eps) and not krylov_invariant(1.0, values, 4, eps)
    # relative to the spectrum however small (no floor at eps: a Hessian of scale 1e-11 is no
    # rounding noise in float32); an all-zero spectrum is invariant only for beta = 0
    zeros = np.zeros(2)
    assert krylov_invariant(0.0, zeros, 1, eps) and not krylov_invariant(1e-300, zeros, 1, eps)
    small = values * 1e-30
    assert not krylov_invariant(1e-43, small, 100, eps) and krylov_invariant(1e-44, small, 100, eps)
    # nor sqrt(n) of the vectors' length: at 4e6 float32 entries that level was 2.4e-3 of the scale,
    # and a warm start 2e-3 off its eigenvector stopped after one product, "converged" at tol 1e-3
    eps32 = float(np.finfo(np.float32).eps)
    assert not krylov_invariant(2e-3, np.array([1.0]), 4 * 10**6, eps32)


@pytest.mark.parametrize("m, keep", [(6, 3), (9, 4), (4, 1)])
def test_thick_restart_is_the_projection_on_the_restarted_basis(m, keep):
    n = 40
    A = random_symmetric(n, seed=m)
    Q, alphas, betas = numpy_lanczos(A, np.random.default_rng(5).standard_normal(n), m)
    values, vectors = ritz_pairs(tridiagonal(alphas, betas[: m - 1]), m)
    capacity = m
    S_k, T_new = thick_restart(values, vectors, betas[m - 1], keep, capacity)
    assert S_k.shape == (m, keep) and S_k.flags.c_contiguous and T_new.shape == (capacity, capacity)
    # the kept columns are the top `keep` Ritz vectors, largest first, copied exactly
    for i in range(keep):
        np.testing.assert_array_equal(S_k[:, i], vectors[:, m - 1 - i])
    # the restarted basis [Q S_k, q_m] is orthonormal and T_new is A projected onto it
    Y = np.vstack([S_k.T @ Q[:m], Q[m]])
    np.testing.assert_allclose(Y @ Y.T, np.eye(keep + 1), atol=1e-9)
    projected = Y @ A @ Y.T
    np.testing.assert_allclose(T_new[:keep + 1, :keep + 1][:, :keep], projected[:, :keep], atol=1e-9)
    np.testing.assert_allclose(T_new[:keep, keep], projected[:keep, keep], atol=1e-9)
    assert np.all(T_new[keep + 1:] == 0) and np.all(T_new[:, keep + 1:] == 0)
    assert T_new[keep, keep] == 0  # alpha of q_m comes from the next step
    # the restart keeps the Ritz pairs exactly: diag(theta_k), and the top one is (theta, e_0)
    kept_values, kept_vectors = ritz_pairs(T_new, keep)
    np.testing.assert_array_equal(kept_values, np.sort(values)[-keep:])
    theta, s = top_ritz_pair(kept_values, kept_vectors)
    assert theta == values[-1]
    np.testing.assert_array_equal(np.abs(s), np.eye(keep)[0])
    np.testing.assert_array_equal(np.abs(S_k @ s), np.abs(vectors[:, -1]))  # the same Ritz vector


def test_both_solvers_take_their_steps_from_the_shared_functions(monkeypatch):
    calls = {"stop_test": 0, "thick_restart": 0, "tridiagonal_update": 0}
    for name in calls:
        original = getattr(lanczos_module, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(lanczos_module, name, counted)
    A = torch.tensor(random_symmetric(30, seed=6))
    v0 = torch.ones(30, dtype=torch.float64)
    single = lanczos_top_eigenpair(lambda v: A @ v, v0, tol=1e-10, max_iter=60, max_basis=4)
    assert calls["stop_test"] == calls["tridiagonal_update"] == single.matvecs
    assert calls["thick_restart"] > 0
    before = dict(calls)
    batched = batched_lanczos(lambda active, V: V @ A, v0[None].repeat(2, 1), tol=[1e-10, 1e-10],
                              max_iter=[60, 60], max_basis=4)
    assert calls["tridiagonal_update"] - before["tridiagonal_update"] == batched[0].matvecs
    assert calls["stop_test"] - before["stop_test"] == 2 * batched[0].matvecs
    assert calls["thick_restart"] - before["thick_restart"] == 2 * before["thick_restart"]
    assert batched[0].value == pytest.approx(single.value, rel=1e-10) and batched[0].matvecs == single.matvecs


@settings(max_examples=80, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(8, 160), shape=st.sampled_from(
    ["normal", "outlier cluster", "small gap"]), max_basis=st.sampled_from([4, 8, 32]),
    tol=st.sampled_from([1e-2, 3e-3, 1e-4]), double=st.booleans())
# n vectors without the pass need not span R^n (this one claimed convergence at 10x its tol)
@example(seed=445, n=8, shape="outlier cluster", max_basis=8, tol=1e-4, double=False)
def test_plain_lanczos_keeps_its_residual_promise(seed, n, shape, max_basis, tol, double):
    """``reorthogonalize=False`` (the coarse levels' start vectors): no Gram-Schmidt pass, thick
    restarts included. Where it says converged, the returned pair's true relative residual
    ``||A v - theta v|| / |theta|`` (float64, from the dense matrix) is within ``tol``, and where
    ``tol`` is well under the top eigenvalue's gap ``theta`` is that eigenvalue."""
    rng = np.random.default_rng(seed)
    values = {"normal": rng.standard_normal(n),
              "outlier cluster": np.concatenate([rng.standard_normal(n - 3),
                                                 5 + 0.01 * rng.standard_normal(3)]),
              "small gap": np.concatenate([rng.uniform(-1, 1, n - 1), [1.02]])}[shape]
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = torch.tensor((Q * values) @ Q.T)
    dtype = torch.float64 if double else torch.float32
    A_d = A.to(dtype)
    v0 = torch.tensor(rng.standard_normal(n), dtype=dtype)
    est = lanczos_top_eigenpair(lambda v: A_d @ v, v0, tol=tol, max_iter=400,
                                max_basis=max_basis, reorthogonalize=False)
    assert math.isfinite(est.value)
    if not est.converged:
        return
    v = est.vector.double()
    true_residual = float(torch.linalg.vector_norm(A @ v - est.value * v)) / abs(est.value)
    slack = 0.0 if double else 1e-5  # float32 products
    assert true_residual <= 1.1 * tol + slack
    top = np.sort(values)[::-1]
    if shape == "small gap" and tol < 1e-3:
        # lambda_1 = 1.02 alone above the bulk in [-1, 1]: a residual well under the 2% gap
        # tells it from the bulk's top (at tol 1e-2 the top Ritz value may still be that one)
        assert abs(est.value - top[0]) <= 2 * tol * abs(top[0]) + slack


def test_plain_lanczos_step_is_the_three_term_recurrence():
    """Same start, same top eigenvalue, with and without the Gram-Schmidt pass; one plain step
    is the three-term recurrence alone: ``alpha = q^T A q``, ``beta = ||A q - alpha q||``."""
    A = torch.tensor(random_symmetric(60, seed=3))
    v0 = torch.ones(60, dtype=torch.float64)
    full = lanczos_top_eigenpair(lambda v: A @ v, v0, tol=1e-8, max_iter=60, max_basis=60)
    plain = lanczos_top_eigenpair(lambda v: A @ v, v0, tol=1e-8, max_iter=60, max_basis=60,
                                  reorthogonalize=False)
    top = float(np.linalg.eigvalsh(A.numpy())[-1])
    assert full.value == pytest.approx(top, rel=1e-8)
    assert plain.value == pytest.approx(top, rel=1e-8)
    basis = lanczos_module.KrylovBasis(v0)
    T = np.zeros((3, 3))
    basis.append(v0 / torch.linalg.vector_norm(v0))
    w = A @ basis.last()
    alpha, beta = lanczos_module.lanczos_step(basis, T, w.clone(), reorthogonalize=False)
    assert float(alpha) == pytest.approx(float(basis.last() @ w), rel=1e-12)
    expected = w - alpha * basis.last()
    assert float(beta) == pytest.approx(float(torch.linalg.vector_norm(expected)), rel=1e-12)


def test_a_warm_start_near_tol_in_a_million_float32_entries_is_not_called_invariant():
    # beta ~ 1.1e-3 of the scale after one product: under the old level 10 eps sqrt(n) = 1.2e-3
    # (n = 1e6, float32), so the solvers stopped there "invariant": converged with a residual
    # above tol (Lanczos), residuals of 2e-8 reported for 1e-3 (top-k)
    n, tol = 10**6, 1e-3
    g = torch.Generator().manual_seed(0)
    d = torch.rand(n, generator=g) * 0.5
    d[0], d[1] = 1.0, 0.9
    v0 = torch.randn(n, generator=g)
    v0 = v0 / v0.norm() * 1.5e-3
    v0[0] = 1.0                                   # the top eigenvector, a little off
    est = lanczos_top_eigenpair(lambda v: d * v, v0, tol=tol, max_iter=50)
    assert est.converged and est.error_bound <= tol and est.matvecs > 1
    y = est.vector.double()
    assert float(torch.linalg.vector_norm(d.double() * y - est.value * y)) <= 1.01 * tol * est.value
    eig = lanczos_top_k(lambda v: d * v, v0, 2, tol=tol, max_iter=50)
    assert eig.converged
    for value, vector, reported in zip(eig.values, eig.vectors.double(), eig.residuals):
        true = float(torch.linalg.vector_norm(d.double() * vector - value * vector)) / value
        assert true <= 1.01 * reported + 1e-5, (true, reported)   # float32 sums over 1e6 entries


def test_norms_and_inner_products_of_long_float32_vectors_are_accurate(single_thread):
    # on one thread (conftest's fixture) torch's one-pass float32 sums have one accumulator: least accurate
    # one pass over 4e6 float32 entries: norm 7.7e-5 off, q^T A q (like-signed terms) 2.2e-5
    from catapult.curvature.krylov import inner_product, vector_norm

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4 * 10**6, generator=gen), torch.rand(4 * 10**6, generator=gen)
    assert float(vector_norm(x)) == pytest.approx(float(x.double().norm()), rel=1e-6)
    assert float(inner_product(x.abs(), y)) == pytest.approx(float(x.abs().double() @ y.double()), rel=1e-6)
    # the split form (FSDP2): one rank's part, summed by an identity "all-reduce"
    assert float(vector_norm(x, reduce=lambda t: t)) == pytest.approx(float(x.double().norm()), rel=1e-6)


def test_a_float32_solve_over_four_million_entries_keeps_its_bound_and_rounding(single_thread):
    # the rounding of those sums reached the Ritz value: 8.8e-6 off with an error_bound of 4e-6
    # (one-pass norms and alpha). The Gram-Schmidt coefficients' chunking is not told apart here
    # (measured at stop 48: 1.2e-7 off one-pass, 1.1e-7 chunked; the next test checks it directly)
    d, v0 = long_float32_diagonal()
    est = lanczos_top_eigenpair(lambda v: d * v, v0, tol=1e-5, max_iter=100, max_basis=8)
    assert est.converged
    assert abs(est.value - 1.0) <= est.error_bound * est.value + 1e-6
    fine = lanczos_top_eigenpair(lambda v: d * v, v0, tol=1e-6, max_iter=100, max_basis=8)
    assert abs(fine.value - 1.0) <= 1e-6


def test_gram_schmidt_coefficients_of_long_float32_rows_are_accurate(single_thread):
    # rows @ w over 4e6 like-signed float32 entries, one pass: 1.6e-5 off (relative) on one thread;
    # in DOT_CHUNK column chunks ~1e-7 (mutation pass 6, KR8: the one-pass product; the solves of
    # this file did not tell, their coefficients being small); truth: the float64 product
    from catapult.curvature.krylov import rows_inner_products

    gen = torch.Generator().manual_seed(0)
    rows, w = torch.randn(3, 4 * 10**6, generator=gen).abs(), torch.rand(4 * 10**6, generator=gen)
    exact = rows.double() @ w.double()
    got = rows_inner_products(rows, w)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), exact.numpy(), rtol=1e-6)
