"""The MAX_PRODUCTS bounds at their edges (mutation pass 15): a count of exactly 10**5 products is
in (a trace of an operator of dimension 10**5, a density of runs x steps = 10**5), a bare
lanczos_quadrature refuses more steps before any product, and catapult spectrum names
--density-steps past its bound even where no density is asked. Truth: the docstrings' bounds."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import catapult
from catapult import config as cfg

MOST = 100_000


def test_a_trace_of_exactly_the_bound_is_taken():
    from catapult.curvature.spectrum import check_matvecs

    assert check_matvecs(MOST, n=MOST) == MOST
    assert check_matvecs(10 ** 6, n=MOST) == 10 ** 6          # the exact trace from 10**5 products
    with pytest.raises(ValueError, match="got 100001 for dimension 100001"):
        check_matvecs(MOST + 1, n=MOST + 1)


def test_a_density_of_exactly_the_bound_is_taken():
    torch.manual_seed(0)
    model, batch = nn.Linear(3, 2), (torch.randn(8, 3), torch.randn(8, 2))
    dens = catapult.spectral_density(model, nn.MSELoss(), batch, runs=2, steps=MOST // 2)
    assert dens.nodes.shape[0] == 2       # 2 runs, each cut to the 8 steps the dimension allows


def test_lanczos_quadrature_refuses_more_steps_before_any_product():
    from catapult.curvature.spectrum import lanczos_quadrature

    products = []

    def matvec(v):
        products.append(1)
        return v

    with pytest.raises(ValueError, match=rf"^lanczos_quadrature steps must be an integer in \[1, {MOST}\]"):
        lanczos_quadrature(matvec, torch.ones(4, dtype=torch.float64), MOST + 1)
    assert not products


def test_catapult_spectrum_names_density_steps_past_its_bound():
    from catapult.engine.spectrum_study import measure_spectrum

    with pytest.raises(cfg.ConfigError) as info:
        measure_spectrum(cfg.validate({}), top_k=0, trace_matvecs=0, density_runs=0, density_steps=10 ** 9)
    assert info.value.problems == [("--density-steps", f"must be an integer in [1, {MOST}]; got 1000000000")]


def test_a_grid_one_row_past_a_block_is_drawn_to_its_last_point():
    # the density is drawn in blocks of 2**22 // (nodes kept) grid rows: a grid of one block and
    # one row has its last point drawn too (re-derived in NumPy from the returned nodes and weights)
    import numpy as np

    torch.manual_seed(0)
    model = nn.Linear(1, 1).double()
    batch = (torch.randn(8, 1, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))
    first = catapult.spectral_density(model, nn.MSELoss(), batch, runs=4, steps=2, grid_points=128)
    kept = int((first.weights > 0).sum())
    rows = 2 ** 22 // kept
    dens = catapult.spectral_density(model, nn.MSELoss(), batch, runs=4, steps=2, grid_points=rows + 1)
    assert dens.grid.shape == dens.density.shape == (rows + 1,)
    at = np.r_[0:3, rows - 2:rows + 1]
    z = (dens.grid[at, None] - dens.nodes.ravel()[None, :]) / dens.sigma
    direct = np.exp(-0.5 * z ** 2) @ dens.weights.ravel() / (4 * dens.sigma * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(dens.density[at], direct, rtol=1e-12, atol=1e-300)


def test_runs_x_steps_of_exactly_the_bound_are_taken_before_the_cap_and_after_it():
    # the density above runs 2 x min(steps, 8): its products never reach the bound; here the
    # bound itself, 10**5 products, is taken and one more is refused, with and without the cap
    from catapult.curvature.spectrum import check_density_products

    check_density_products(2, MOST // 2)
    check_density_products(MOST, 40, n=1)
    with pytest.raises(ValueError, match=r"got 2 x 50001 = 100002$"):
        check_density_products(2, MOST // 2 + 1)
    with pytest.raises(ValueError, match=r"got 100000 x 2 = 200000 \(steps capped at the operator's dimension 2\)$"):
        check_density_products(MOST, 40, n=2)
