"""curvature.density and curvature.trace at the bounds they define (mutation pass 23)."""
from __future__ import annotations

import pytest

from catapult.arguments import MAX_PRODUCTS
from catapult.curvature.density import check_density_products


def test_runs_times_steps_of_exactly_max_products_is_taken():
    assert MAX_PRODUCTS == 10 ** 5
    check_density_products(100, 1000)
    check_density_products(10 ** 5, 40, n=1)          # steps capped at the dimension: 10**5 x 1
    with pytest.raises(ValueError, match=r"got 100 x 1001 = 100100"):
        check_density_products(100, 1001)


def test_lanczos_quadrature_takes_at_most_dimension_steps():
    # dimension caps the steps (for split vectors it is the whole length): 2 steps on diag(1, 2, 3, 4)
    # from the ones vector are the 2-point Gauss rule of the uniform measure on {1, 2, 3, 4}:
    # T = [[2.5, b], [b, 2.5]], b^2 = 1.25 (the variance), nodes 2.5 -+ sqrt(1.25), weights 1/2
    import math

    import torch

    from catapult.curvature.density import lanczos_quadrature

    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    nodes, weights = lanczos_quadrature(lambda v: A @ v, torch.ones(4, dtype=torch.float64), 4, dimension=2)
    assert nodes.tolist() == pytest.approx([2.5 - math.sqrt(1.25), 2.5 + math.sqrt(1.25)], rel=1e-14, abs=0)
    assert weights.tolist() == pytest.approx([0.5, 0.5], rel=1e-14, abs=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_quadrature_runs_past_its_first_step(dtype):
    # the invariance floor is at most sqrt(eps): 1e3 eps is 0.98 in float16 (7.8 in bfloat16), and
    # every run ended after one step, one node at the Rayleigh quotient 2.5; diag(1, 2, 3, 4) from
    # the ones vector has 4 nodes, the eigenvalues, within a few roundings of |A| = 4
    import torch

    from catapult.curvature.density import lanczos_quadrature

    dt = getattr(torch, dtype)
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dt))
    nodes, weights = lanczos_quadrature(lambda v: A @ v, torch.ones(4, dtype=dt), 4)
    eps = torch.finfo(dt).eps
    assert len(nodes) == 4
    assert max(abs(nodes - [1.0, 2.0, 3.0, 4.0])) <= 4 * eps * 4


def _rotated(diag, coeffs):
    import torch

    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(len(diag), len(diag), generator=g, dtype=torch.float64))[0]
    A = Q @ torch.diag(torch.tensor(diag, dtype=torch.float64)) @ Q.T
    return (lambda x: A @ x), Q @ torch.tensor(coeffs, dtype=torch.float64)


def test_a_start_in_a_two_dimensional_invariant_subspace_gives_two_nodes():
    # v = q1 + q2 of A = 1e6 I + diag(0, 1, 2, 3) (rotated, and as it is): after 2 steps the remainder
    # is rounding, ~eps ||A q||, far below 1e3 eps ||A q_j|| (Pythagoras: alpha ~ 1e6, beta ~ 0.5), so
    # the run ends: nodes 1e6 and 1e6 + 1 within a few roundings of |A|, weights 1/2
    import torch

    from catapult.curvature.density import lanczos_quadrature

    diag = [1e6, 1e6 + 1, 1e6 + 2, 1e6 + 3]
    eps = torch.finfo(torch.float64).eps
    rotated = _rotated(diag, [1.0, 1.0, 0.0, 0.0])
    A = torch.diag(torch.tensor(diag, dtype=torch.float64))
    plain = (lambda x: A @ x), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    for matvec, v in (rotated, plain):
        nodes, weights = lanczos_quadrature(matvec, v, 4)
        assert len(nodes) == 2
        assert max(abs(nodes - [1e6, 1e6 + 1])) <= 16 * eps * 1e6
        assert max(abs(weights - 0.5)) <= 1e-9


def test_an_invariant_subspace_is_judged_against_the_products_size_not_against_one():
    # v = 1e-8 q1 + q2 + q3 of diag(1e8, 1, ..., 5) (rotated): the 3-dimensional invariant subspace's
    # remainder is rounding of 1e8-sized products (~1e-8), above 1e3 eps in absolute terms but not
    # beside ||A q_j|| ~ 1e8: 3 nodes, 1, 2 and 1e8, not 6 with ghosts
    import torch

    from catapult.curvature.density import lanczos_quadrature

    eps = torch.finfo(torch.float64).eps
    nodes, weights = lanczos_quadrature(*_rotated([1e8, 1.0, 2.0, 3.0, 4.0, 5.0], [1e-8, 1.0, 1.0, 0.0, 0.0, 0.0]), 6)
    assert len(nodes) == 3
    assert max(abs(nodes - [1.0, 2.0, 1e8])) <= 16 * eps * 1e8


def test_a_run_that_ends_early_pads_with_its_last_node_so_the_grid_spans_the_eigenvalues():
    # H = 2/3 diag(4, 1, 1) (MSE of a bias-free Linear(3, 1) on three rows): two distinct eigenvalues,
    # so every run ends after 2 of its 3 steps and is padded; the pads are its own last node (weight
    # 0), so every node is 8/3 or 2/3, the default sigma 1% of 2 and the grid starts at 2/3 - 3 sigma
    # (padding with 0 put a node, and the grid, at 0)
    import numpy as np
    import torch

    import catapult

    model = torch.nn.Linear(3, 1, bias=False)
    batch = (torch.diag(torch.tensor([2.0, 1.0, 1.0])), torch.zeros(3, 1))
    dens = catapult.spectral_density(model, torch.nn.MSELoss(), batch, runs=2, steps=3)
    assert dens.nodes.shape == (2, 3)
    assert dens.weights[:, 2].tolist() == [0.0, 0.0]
    assert np.all(np.isclose(dens.nodes, 8 / 3, rtol=1e-5) | np.isclose(dens.nodes, 2 / 3, rtol=1e-5))
    assert dens.sigma == pytest.approx(0.02, rel=1e-5)
    assert dens.grid[0] == pytest.approx(2 / 3 - 0.06, rel=1e-5)


def test_the_default_sigma_of_a_single_eigenvalue_is_relative_to_it():
    # H = (8) (MSE of a bias-free Linear(1, 1) on x = 2): no range, so sigma is the relative floor
    # 1e-12 |lambda| = 8e-12, not the absolute 1e-12 kept for a zero operator
    import torch

    import catapult

    model = torch.nn.Linear(1, 1, bias=False)
    dens = catapult.spectral_density(model, torch.nn.MSELoss(), (torch.tensor([[2.0]]), torch.zeros(1, 1)), runs=1, steps=1)
    assert dens.nodes.ravel().tolist() == pytest.approx([8.0], rel=1e-6)
    assert dens.sigma == pytest.approx(8e-12, rel=1e-6, abs=0)


def test_a_grid_cutting_off_more_than_one_percent_warns():
    # a Gaussian of sigma 1 sampled finely on [-2, 2] integrates to erf(sqrt 2) = 0.9545: 4.6% short,
    # beyond the 1% the density promises, so it warns with that integral
    import math
    import warnings

    import numpy as np

    from catapult.curvature.density import warn_coarse_grid

    grid = np.linspace(-2.0, 2.0, 401)
    assert math.erf(math.sqrt(2)) == pytest.approx(0.9545, abs=5e-5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_coarse_grid(grid, np.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi), 1.0)
    assert [str(w.message)[:58] for w in caught] == ["spectral_density: the density integrates to 0.954 over its"]


def test_the_split_orthonormalisation_drops_dependent_rows_and_is_orthonormal_to_rounding():
    # Hutch++'s Q for vectors split over the ranks (reduce: the all-reduce; one rank's is the identity):
    # rows of rank 2 give 2 orthonormal rows (an eigenvalue of the Gram matrix that is rounding, kept,
    # was divided by its square root), and rows of singular values 1 .. 1e-7 (Gram eigenvalues down to
    # 1e-14, above 6 eps) 6 rows orthonormal to rounding after the second pass
    import torch

    from catapult.curvature.trace import _orthonormal_rows

    def gap(R):
        return float((R @ R.T - torch.eye(R.shape[0], dtype=torch.float64)).abs().max())

    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(2, 40, generator=g, dtype=torch.float64)
        R = _orthonormal_rows(torch.stack([a, b, 3 * a - b, a + 0.5 * b]), lambda x: x)
        assert R.shape == (2, 40) and gap(R) <= 1e-14, seed
        B = torch.linalg.qr(torch.randn(40, 6, generator=g, dtype=torch.float64))[0].T
        R = _orthonormal_rows(torch.diag(torch.logspace(0, -7, 6, dtype=torch.float64)) @ B, lambda x: x)
        assert R.shape == (6, 40) and gap(R) <= 1e-14, seed


def test_trace_matvecs_of_exactly_max_products_are_taken():
    from catapult.curvature.trace import check_matvecs

    assert check_matvecs(MAX_PRODUCTS, n=10 ** 7) == 10 ** 5
    with pytest.raises(ValueError, match=r"got 100001 for dimension 10000000"):
        check_matvecs(MAX_PRODUCTS + 1, n=10 ** 7)
