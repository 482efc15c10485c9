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
