"""``SpectralDensity.density`` integrates to ~1 over its grid, as documented, only where the grid
samples each Gaussian: with a spacing wider than ``sigma`` it is sampled between the peaks, and
came back silently integrating to 0.36 (``sigma=1e-6`` on the default 1,000 points) or 0.83 (the
default ``sigma`` on 10 points). That now warns (RuntimeWarning naming the integral, the spacing in
sigmas and the ``grid_points`` that would do). A ``sigma`` whose grid or density cannot be finite
floats (``1e308``: a grid and a density of nan; ``1e-310``: a density of inf) is refused before any
product is taken."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

import catapult

trapezoid = getattr(np, "trapezoid", None) or np.trapz   # (NumPy 2 renamed it)


def problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    batch = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64))
    return model, torch.nn.MSELoss(), batch


def density(**kwargs):
    model, loss_fn, batch = problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dens = catapult.spectral_density(model, loss_fn, batch, runs=2, steps=6, **kwargs)
    return dens, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


WARNING = (r"spectral_density: the density integrates to (\S+) over its grid, not ~1: the grid's spacing, (\S+), "
           r"is (\S+) sigma \(sigma = (\S+)\); pass (?:grid_points >= (\d+))?(?: or )?(?:sigma >= (\S+))?")


@pytest.mark.parametrize("kwargs", [{"sigma": 1e-4}, {"grid_points": 10}, {"sigma": 1e-7}],
                         ids=["narrow_sigma", "few_points", "sigma_past_the_most_points"])
def test_a_grid_too_coarse_for_sigma_warns_with_the_integral_and_what_would_do(kwargs):
    dens, said = density(**kwargs)
    total = float(trapezoid(dens.density, dens.grid))
    assert abs(total - 1) > 0.1   # the silent answer: far from the ~1 promised
    assert len(said) == 1, said
    shown = re.fullmatch(WARNING, said[0])
    assert shown is not None, said[0]
    assert float(shown.group(1)) == pytest.approx(total, rel=5e-3)   # (shown to 3 digits)
    spacing = float(dens.grid[1] - dens.grid[0])
    assert float(shown.group(2)) == pytest.approx(spacing, rel=5e-3)
    assert float(shown.group(3)) == pytest.approx(spacing / dens.sigma, rel=5e-3)
    # what it names gives a spacing of at most sigma, and the density integrates to 1 within the
    # 0.27% that the grid's ends at +- 3 sigma cut off; grid_points only up to its 10**6
    span = float(dens.nodes.max() - dens.nodes.min())
    points, wider = shown.group(5), shown.group(6)
    assert (points is None) == (span / dens.sigma + 1 > 10 ** 6) and wider is not None
    fixes = ([{"grid_points": int(points)}] if points else []) + [{"sigma": float(wider) * (1 + 1e-3)}]
    for fix in fixes:
        again, said_again = density(**{**kwargs, **fix})
        assert said_again == []
        np.testing.assert_array_equal(again.nodes, dens.nodes)
        assert (again.grid[-1] - again.grid[0]) / (again.grid.size - 1) <= again.sigma
        assert float(trapezoid(again.density, again.grid)) == pytest.approx(1.0, abs=3e-3)


def test_the_default_grid_integrates_to_one_without_a_warning():
    dens, said = density()
    assert said == []
    assert float(trapezoid(dens.density, dens.grid)) == pytest.approx(1.0, abs=3e-3)


@pytest.mark.parametrize("sigma", [1e308, 1.7e308, 1e-310, 5e-324])
def test_a_sigma_whose_grid_or_density_overflows_is_refused_before_any_product(sigma):
    model, loss_fn, batch = problem()
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    with pytest.raises(ValueError, match=rf"^spectral_density sigma must be in \[8\.87676e-309, 2\.24712e\+307\] "
                                         rf"\(the density's peak .*; got {re.escape(repr(sigma))}$"):
        catapult.spectral_density(model, loss_fn, batch, runs=2, steps=6, sigma=sigma)
    assert forwards == []
    # the ends themselves draw finite densities
    for end in (catapult.curvature.spectrum.SIGMA_MIN, catapult.curvature.spectrum.SIGMA_MAX):
        dens, _ = density(sigma=end)
        assert np.isfinite(dens.grid).all() and np.isfinite(dens.density).all()
