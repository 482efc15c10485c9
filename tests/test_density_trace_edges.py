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
