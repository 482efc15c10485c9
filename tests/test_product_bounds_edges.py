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
