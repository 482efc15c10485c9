"""The spectrum functions do not depend on the operator's units: a loss scaled by ``c`` has
the Hessian scaled by ``c``, so its spectral density's nodes scale by ``c`` and its weights do
not change. Checked against the closed-form Hessian of a linear model (``H = 2 X^T X / N``
under the mean squared error), whatever ``c`` and the dtype."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import catapult
from catapult.curvature.spectrum import lanczos_quadrature


def diagonal_problem(c: float, dtype):
    """A bias-free ``Linear(4, 1)`` on ``X = diag(a)`` (4 samples): ``H = diag(a^2 / 2)``, here
    ``c * (1, 2, 3, 4)``. A Rademacher probe has weight 1/4 on each eigenvector."""
    model = torch.nn.Linear(4, 1, bias=False).to(dtype)
    a = torch.sqrt(2 * c * torch.arange(1.0, 5.0, dtype=torch.float64)).to(dtype)
    return model, torch.nn.MSELoss(), (torch.diag(a), torch.zeros(4, 1, dtype=dtype))


@pytest.mark.parametrize("c, dtype, rtol", [(1.0, torch.float64, 1e-10), (1e-14, torch.float64, 1e-10),
                                            (1.0, torch.float32, 1e-4), (1e-6, torch.float32, 1e-4)])
@pytest.mark.parametrize("max_basis", [2, None])
def test_spectral_density_of_a_small_scale_operator_keeps_every_eigenvalue(c, dtype, rtol, max_basis):
    """Lanczos stopped where a remainder was under ``1e3 eps max(1, |alpha|)``, an absolute
    level: every run on eigenvalues ~1e-14 (float64) or ~1e-6 (float32) ended after one step,
    one node at its Rayleigh quotient ``2.5 c`` with all the weight."""
    model, loss_fn, batch = diagonal_problem(c, dtype)
    dens = catapult.spectral_density(model, loss_fn, batch, runs=2, steps=4, max_basis=max_basis)
    truth = c * np.arange(1.0, 5.0)
    assert len(dens.nodes) == len(dens.weights) == 2   # one per run: the loop below compares something
    for nodes, weights in zip(dens.nodes, dens.weights):
        np.testing.assert_allclose(np.sort(nodes), truth, rtol=rtol)
        np.testing.assert_allclose(weights, 0.25, rtol=rtol)


def test_lanczos_quadrature_reproduces_the_moments_of_a_tiny_operator():
    """Gauss quadrature of ``steps`` nodes is exact for degree < 2 steps: ``sum_j w_j theta_j^p
    = v^T A^p v / ||v||^2`` for p <= 5, here on a float32 diagonal ``A`` of scale 1e-5."""
    d = torch.linspace(1.0, 3.0, 12, dtype=torch.float64) * 1e-5
    v = torch.linspace(0.5, 1.5, 12, dtype=torch.float64)
    nodes, weights = lanczos_quadrature(lambda u: d.float() * u, v.float(), 3)
    assert len(nodes) == 3
    for p in range(6):
        truth = float((v ** 2 * d ** p).sum() / (v ** 2).sum())
        assert float(weights @ nodes ** p) == pytest.approx(truth, rel=1e-4, abs=0)


@pytest.mark.parametrize("c", [1.0, 1e-13])
def test_the_default_width_is_one_percent_of_the_range_whatever_the_units(c):
    """``sigma`` defaults to 1% of the nodes' range (3c here), so the four eigenvalues stay four
    peaks, each of mass 1/4; an absolute floor of 1e-12 made it 300x that at c = 1e-13."""
    model, loss_fn, batch = diagonal_problem(c, torch.float64)
    dens = catapult.spectral_density(model, loss_fn, batch, runs=1, steps=4, grid_points=2001)
    assert dens.sigma == pytest.approx(0.03 * c, rel=1e-9, abs=0)
    peak = 0.25 / (dens.sigma * np.sqrt(2 * np.pi))
    for value in c * np.arange(1.0, 5.0):
        at = int(np.argmin(np.abs(dens.grid - value)))
        assert dens.density[at] == pytest.approx(peak, rel=1e-3)


def test_a_zero_operator_has_its_density_at_zero():
    model = torch.nn.Linear(3, 1, bias=False).double()
    batch = (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    dens = catapult.spectral_density(model, torch.nn.MSELoss(), batch, runs=2, steps=3)
    assert dens.sigma > 0 and np.all(dens.nodes == 0.0)
    assert dens.grid[0] < 0 < dens.grid[-1]


@pytest.mark.parametrize("dtype, shift, spread", [(torch.float64, 0.0, 1.0), (torch.float64, 1000.0, 1.0),
                                                  (torch.float64, 1.0, 1e-3), (torch.float32, 1000.0, 1.0),
                                                  (torch.float32, 1.0, 1e-3)])
def test_the_quadrature_of_three_distinct_eigenvalues_is_three_nodes_at_them(dtype, shift, spread):
    """Eigenvalues ``shift + spread * (1, 2, 3)``, 50 times each: the Krylov space of any start
    closes after 3 products, and Gauss quadrature is those 3 eigenvalues weighted by the start's
    squared projections on their eigenspaces. The remainder at closing is rounding beside
    ``||A q_j||``, not beside the off-diagonal betas alone (shift 1000: 10 nodes, 7 of them noise
    directions), and the stop is at ``1e3 eps`` of it (``1e5 eps`` stopped float32 after 1)."""
    rng = np.random.default_rng(0)
    levels = shift + spread * np.array([1.0, 2.0, 3.0])
    Q, _ = np.linalg.qr(rng.normal(size=(150, 150)))
    A = torch.tensor((Q * np.repeat(levels, 50)) @ Q.T, dtype=dtype)
    v = rng.normal(size=150)
    projections = ((Q.T @ v) ** 2).reshape(3, 50).sum(axis=1) / (v @ v)
    nodes, weights = lanczos_quadrature(lambda u: A @ u, torch.tensor(v, dtype=dtype), 10)
    order = np.argsort(nodes)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(np.asarray(nodes)[order], levels, rtol=rtol, atol=rtol * spread)
    np.testing.assert_allclose(np.asarray(weights)[order], projections, rtol=1e-3 if dtype == torch.float32 else 1e-8)


def test_the_default_width_of_a_narrow_cluster_far_from_zero_is_one_percent_of_its_range():
    """Eigenvalues 1 and 1 + 1e-7: ``sigma`` = 1e-9 (1% of the range), its relative floor being
    ``1e-12 max |theta|``, far below; a floor of 1e-6 |theta| would draw one blob."""
    model = torch.nn.Linear(2, 1, bias=False).double()
    a = torch.sqrt(torch.tensor([1.0, 1.0 + 1e-7], dtype=torch.float64))  # H = diag(a^2) under MSE of 2 samples
    dens = catapult.spectral_density(model, torch.nn.MSELoss(), (torch.diag(a), torch.zeros(2, 1, dtype=torch.float64)),
                                     runs=1, steps=2)
    assert np.sort(dens.nodes[0]) == pytest.approx([1.0, 1.0 + 1e-7], rel=1e-12, abs=1e-14)
    assert dens.sigma == pytest.approx(1e-9, rel=1e-5, abs=0)
