"""Top-k past a closed Krylov space: a start vector's Krylov space holds one copy of each
eigenvalue, so on a small operator it closes (a remainder at rounding level) before the top k
are found, and fresh directions go on into the rest of ``R^n``, which holds only copies. The
zeros of a rank-deficient Hessian are such copies, many times over, and they lie above its
negative eigenvalues: ``converged`` top-k values must be the dense ones, copies included.
Truth: ``numpy.linalg.eigvalsh`` of the dense matrix (float64)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import catapult
from catapult.curvature.top_k import lanczos_top_k

sys.path.insert(0, str(Path(__file__).parent))
from dense_curvature import dense_hessian  # noqa: E402


def operator(values, seed):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(values), len(values))))
    return torch.tensor((Q * np.asarray(values, dtype=np.float64)) @ Q.T)


def test_zeros_above_negative_eigenvalues_are_all_counted():
    """A 19x19 operator with 9 zeros between 5 positive and 5 negative eigenvalues: the Krylov
    space closes after 11 products. Top 8 came back with one zero and -0.011, -0.051 (top 15:
    5 zeros and down to -3.7), "converged"."""
    values = [6.7, 5.2, 4.1, 1.8, 0.26] + [0.0] * 9 + [-0.011, -0.051, -2.7, -3.5, -3.7]
    A = operator(values, 0)
    truth = np.sort(values)[::-1]
    for k in (6, 8, 15):
        eig = lanczos_top_k(lambda v: A @ v, torch.ones(19, dtype=torch.float64), k, tol=1e-8)
        assert eig.converged
        np.testing.assert_allclose(eig.values, truth[:k], rtol=0, atol=1e-7)


def test_top_eigenpairs_of_a_tiny_batch_hessian_past_its_rank():
    """A 4-3-1 tanh MLP on 2 samples: 19 parameters, a Hessian with 9 zeros above 5 negative
    eigenvalues."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    batch = (torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float64))
    loss_fn = torch.nn.MSELoss()
    truth = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[::-1]
    assert np.sum(np.abs(truth) < 1e-10) >= 8 and truth[-1] < -1.0
    for k in (8, 15):
        eig = catapult.top_eigenpairs(model, loss_fn, batch, k=k, tol=1e-6)
        assert eig.converged
        np.testing.assert_allclose(eig.values, truth[:k], rtol=0, atol=1e-6 * abs(truth).max())


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(data=st.data(), n=st.integers(4, 30))
def test_converged_top_k_of_rank_deficient_indefinite_operators_are_the_dense_top_k(data, n):
    """Distinct nonzero eigenvalues of both signs and a zero of any multiplicity, one start
    vector: where the solve says ``converged``, the values are the dense top k."""
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    rank = data.draw(st.integers(1, n - 1))
    nonzero = np.cumsum(rng.uniform(0.1, 1.0, size=rank)) * rng.choice([-1.0, 1.0], size=rank)
    values = np.concatenate([nonzero, np.zeros(n - rank)])
    A = operator(values, seed)
    truth = np.sort(values)[::-1]
    k = data.draw(st.integers(1, n))
    eig = lanczos_top_k(lambda v: A @ v, torch.tensor(rng.normal(size=n)), k, tol=1e-8, max_iter=10 * n)
    # every drawn operator converges at max_iter 10 n (25 of 25); an ``if eig.converged:`` here let a
    # solve that never says converged pass without a compare
    assert eig.converged
    np.testing.assert_allclose(eig.values, truth[:k], rtol=0, atol=1e-6 * abs(truth).max())


def test_a_float32_space_that_closes_above_the_rounding_level_is_still_checked():
    """Eigenvalues 0 (4 times), -1.0 and -1.1 in float32: the space closes after 3 products, but
    its last remainder came out 1.6x the rounding level and was taken as a direction; top 3
    were 0, -1.0, -1.1, "converged", where they are 0, 0, 0."""
    found = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        A = operator([-1.0, -1.1, 0.0, 0.0, 0.0, 0.0], seed).float()
        eig = lanczos_top_k(lambda v: A @ v, torch.tensor(rng.normal(size=6), dtype=torch.float32), 3,
                            tol=1e-3, max_basis=7, seed=seed)
        if eig.converged:
            found.append(eig.values)
    assert found
    np.testing.assert_allclose(found, 0.0, atol=1e-5)


def test_a_budget_that_ends_before_the_check_of_a_closed_space_is_not_converged():
    """Eigenvalues 5, 5, 3, 1, -2: the start vector's space closes after 4 products with top 2
    = 5, 3 (one copy of 5 seen), and the 5th product finds the other 5. ``max_iter=4`` ended the
    solve before that check and reported 5, 3 as converged; ``converged`` means the dense top k."""
    A = operator([5.0, 5.0, 3.0, 1.0, -2.0], 0)
    truth = np.sort(np.linalg.eigvalsh(A.numpy()))[::-1][:2]
    v0 = torch.ones(5, dtype=torch.float64)
    for max_iter in (4, 5, 6, 300):
        eig = lanczos_top_k(lambda v: A @ v, v0, 2, max_iter=max_iter)
        if eig.converged:
            np.testing.assert_allclose(eig.values, truth, atol=1e-9)
    assert lanczos_top_k(lambda v: A @ v, v0, 2, max_iter=300).converged
    # every budget from the closing product up: converged ones are the dense top 2
    for seed in range(3):
        A = operator([0.0] * 6 + [-1.0, -2.0], seed)
        truth = np.sort(np.linalg.eigvalsh(A.numpy()))[::-1][:4]
        for max_iter in range(2, 10):
            eig = lanczos_top_k(lambda v: A @ v, torch.tensor(np.random.default_rng(seed).normal(size=8)), 4,
                                max_iter=max_iter, tol=1e-6)
            if eig.converged:
                np.testing.assert_allclose(eig.values, truth, atol=1e-6, err_msg=f"seed {seed} max_iter {max_iter}")
        assert eig.converged, seed   # budgets 7, 8, 9 converge on each seed: the compare above is made


def test_a_triple_top_eigenvalue_past_a_closed_space_is_found_whole():
    """Eigenvalues 5 (3 times), 3, 1 (10 times each) and -2 (17 times): the start vector's space
    closes after 4 products with top 3 = 5, 3, 1, and one product of a fresh direction (its
    Rayleigh quotient, a mean of the copies, ~0.4) left them unchanged: 5, 3, 1 came back
    "converged" where the dense top 3 is 5, 5, 5 (and top 4 of 10 zeros over negatives, 0, 0,
    -1, -1). Each fresh direction's own space must close before the top k stand."""
    cases = [([5.0] * 3 + [3.0] * 10 + [1.0] * 10 + [-2.0] * 17, 3, 1),
             ([0.0] * 10 + [-1.0] * 10 + [-2.0] * 20, 4, 1),
             ([5.0] * 3 + [3.0] * 10 + [1.0] * 10 + [-2.0] * 17, 4, 2)]
    for values, k, block_size in cases:
        truth = np.sort(values)[::-1][:k]
        for seed in range(2):
            A = operator(values, seed)
            v0 = torch.tensor(np.random.default_rng(seed).normal(size=len(values)))
            eig = lanczos_top_k(lambda v: A @ v, v0, k, tol=1e-6, block_size=block_size, max_basis=41)
            assert eig.converged, (values[:4], k, seed)
            np.testing.assert_allclose(eig.values, truth, atol=1e-6, err_msg=f"k {k} seed {seed}")
            # by the closures' check (zeros compared to tol * spread), not by spanning R^n: 15-20 products
            assert eig.matvecs < len(values) - 10, (k, seed, eig.matvecs)


def test_a_block_whose_fresh_space_closes_in_part_is_not_a_closed_space():
    """Eigenvalues 0.2 (3 times), -1.5, -1.8, -4.5, -4.6, -5 (8 times), a block of 2: the block's
    space closes after 8 products with 0.2 twice, and the two fresh directions span 3 directions
    (0.2 once, -5 twice), so their first remainders are 1 of 2 (a partial closure). That was
    taken as the fresh space closed, and top 4 = 0.2, 0.2, -1.5, -1.8 came back "converged" (10
    products, float64 and float32), where 0.2 is 3 times: the fresh space must close whole."""
    values = [0.2] * 3 + [-1.5, -1.8, -4.5, -4.6] + [-5.0] * 8
    truth = np.sort(values)[::-1][:4]
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-4)):
        for seed in range(2):
            A = operator(values, seed).to(dtype)
            v0 = torch.tensor(np.random.default_rng(seed).normal(size=15), dtype=dtype)
            eig = lanczos_top_k(lambda v: A @ v, v0, 4, tol=tol, block_size=2)
            assert eig.converged, (dtype, seed)
            np.testing.assert_allclose(eig.values, truth, atol=1e-5, err_msg=f"{dtype} seed {seed}")


def test_a_block_that_first_closes_in_part_is_checked_before_its_top_k_stand():
    """Block of 2, a triple top (or top-of-the-rest) eigenvalue: the block's space closes in part
    (one remainder of the two at rounding level, or the remainders dependent) where the top k
    already look converged. That partial closure is a closed space: its top k stand only after a
    fresh space has closed whole (without it, 2 copies of the triple)."""
    cases = [([-0.2] * 3 + [-0.7, -0.75, -2.5] + [-4.5] * 9, 5),
             ([3.6] * 3 + [3.2] * 2 + [3.1] + [1.0] * 7 + [-1.4] * 6, 4),
             ([2.4] * 7 + [-1.6] * 2 + [-2.2] * 3 + [-2.7] * 8 + [-2.9] * 5, 19)]
    for values, k in cases:
        truth = np.sort(values)[::-1][:k]
        for seed in range(3):
            A = operator(values, seed)
            v0 = torch.tensor(np.random.default_rng(seed).normal(size=len(values)))
            eig = lanczos_top_k(lambda v: A @ v, v0, k, tol=1e-6, block_size=2)
            assert eig.converged, (k, seed)   # 9 of 9 do; an ``if`` here passed a solve that never converged
            np.testing.assert_allclose(eig.values, truth, atol=1e-6, err_msg=f"k {k} seed {seed}")


def test_a_closure_on_a_direction_made_from_a_small_remainder_is_seen():
    """A direction normalised from a remainder ``rho`` carries rounding ``~eps scale / rho``
    outside the Krylov space, so its remainder once the space closes is that much over the
    rounding level: 3.6 (3 times), 3.2 (twice), 3.1, 1, -1.4 at a block of 2 closed on a direction
    made from 2e-3 of the scale and left 2.6e-12 (1.1x 100 levels), taken as a new direction:
    top 4 = 3.6, 3.6, 3.2, 3.2 "converged". One start vector on 5 (3 times), 3, 1, -2 (seed 2):
    the fresh space's closure was missed the same way and the check took 148 products, not 15."""
    values = [3.6] * 3 + [3.2] * 2 + [3.1] + [1.0] * 7 + [-1.4] * 6
    A = operator(values, 0)
    eig = lanczos_top_k(lambda v: A @ v, torch.tensor(np.random.default_rng(0).normal(size=19)), 4,
                        tol=1e-6, block_size=2)
    assert eig.converged
    np.testing.assert_allclose(eig.values, [3.6, 3.6, 3.6, 3.2], atol=1e-6)
    values = [5.0] * 3 + [3.0] * 10 + [1.0] * 10 + [-2.0] * 17
    A = operator(values, 2)
    eig = lanczos_top_k(lambda v: A @ v, torch.tensor(np.random.default_rng(2).normal(size=40)), 3, tol=1e-6)
    assert eig.converged and eig.matvecs <= 20, eig.matvecs
    np.testing.assert_allclose(eig.values, [5.0] * 3, atol=1e-6)


def test_a_closure_at_the_end_of_a_long_chain_is_seen():
    """Rounding grows along the chain of directions (each normalisation by a coupling ``rho``
    multiplies it by ``scale / rho``): three zeros above 20 negatives (one 4 times), a block of 2
    (seed 5): the block's space of 20 closed with remainders 8.7e-11 and 3.7e-10, 5x over the last
    factor's allowance, and top 6 came back with 2 zeros and -1.74, "converged"."""
    values = [-2.98, -2.94, -3.26, -2.04, -1.78, -1.93, -2.54, -2.57, -3.65, -1.48, -1.74, -2.61, -4.28,
              -3.73, -1.29, -1.27, -2.82, 0.0, 0.0, 0.0, -2.98, -2.98, -2.98]
    A = operator(values, 5)
    eig = lanczos_top_k(lambda v: A @ v, torch.tensor(np.random.default_rng(5).normal(size=23)), 6,
                        tol=1e-6, block_size=2)
    assert eig.converged
    np.testing.assert_allclose(eig.values, np.sort(values)[::-1][:6], atol=1e-6)


def test_remainders_that_outnumber_the_space_left_are_not_a_closure():
    """23 distinct eigenvalues, top 3 at a block of 3 (a basis of at most 22): after 21 products
    3 remainders share the 2 directions left of R^n, so one drops, and that was taken as a closed
    space; past the restart no space could close whole and the solve ran to ``max_iter`` (460
    products), ``converged=False``, its values right."""
    values = np.random.default_rng(1075).normal(size=23)
    A = operator(values, 1075)
    eig = lanczos_top_k(lambda v: A @ v, torch.tensor(np.random.default_rng(0).normal(size=23)), 3,
                        tol=1e-6, block_size=3, max_iter=460)
    assert eig.converged and eig.matvecs < 100, eig.matvecs
    np.testing.assert_allclose(eig.values, np.sort(values)[::-1][:3], atol=1e-6)
