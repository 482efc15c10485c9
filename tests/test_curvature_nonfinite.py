"""A spectral density of a diverged model (nan parameters, an infinite loss) is a ValueError
that says so, not numpy's "Eigenvalues did not converge"."""
import math

import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature.spectrum import lanczos_quadrature


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    batch = (torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64))
    return model, batch


def test_spectral_density_of_nan_parameters_is_a_clear_error():
    model, batch = problem()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        catapult.spectral_density(model, nn.MSELoss(), batch, runs=2, steps=5)


@pytest.mark.parametrize("max_basis", [None, 2])
def test_spectral_density_of_an_infinite_loss_is_a_clear_error(max_basis):
    model, batch = problem()
    with pytest.raises(ValueError, match="not finite"):
        catapult.spectral_density(model, lambda o, t: nn.functional.mse_loss(o, t) * float("inf"),
                                  batch, runs=2, steps=5, max_basis=max_basis)


def test_lanczos_quadrature_of_a_finite_operator_is_unchanged():
    A = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    nodes, weights = lanczos_quadrature(lambda v: A @ v, torch.ones(2, dtype=torch.float64), 2)
    assert nodes.round(12).tolist() == [1.0, 3.0] and weights.round(12).tolist() == [0.5, 0.5]


def test_micro_batches_of_a_diverged_model_give_nan_not_a_refused_reduction():
    # an inf loss counts as a mean: the products are nan, as without chunk_size (not
    # "loss_fn is neither a mean nor a sum", which compared inf with inf)
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 2, dtype=torch.float64, generator=gen), torch.randn(4, 1, dtype=torch.float64, generator=gen))
    est = catapult.sharpness(model, nn.MSELoss(), batch, chunk_size=2)
    assert math.isnan(est.value) and not est.converged
    assert math.isnan(catapult.hessian_trace(model, nn.MSELoss(), batch, chunk_size=2, matvecs=3))
