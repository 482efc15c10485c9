"""``error_bound`` never claims less than the rounding a float32 solve keeps (issue 16): some
eigenvalue ``lambda`` of the operator has ``|lambda - value| <= error_bound * |value|``, and
``converged`` is ``error_bound <= tol``, also at a ``tol`` below float32's rounding, where the
answer is ``converged=False``. The truth: float64 eigenvalues of the float32 matrix, or the
dense float64 Hessian of a float32 model (``tests/dense_curvature.py``)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import dense_hessian

import catapult
from catapult.curvature.lanczos import batched_lanczos, lanczos_top_eigenpair
from catapult.curvature.lean import lean_top_eigenpair
from catapult.curvature.top_k import lanczos_top_k

TOLS = [1e-5, 1e-7, 1e-9]


def float32_matrix(seed: int, n: int = 80) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n, generator=gen)
    return (X + X.T) / 2


def check_promise(value, bound, converged, tol, eigenvalues):
    distance = float(np.abs(eigenvalues - value).min())
    assert distance <= bound * abs(value), (distance / abs(value), bound, converged)
    assert converged == (bound <= tol)


@pytest.mark.parametrize("seed", range(3))
def test_single_lean_and_batched_solves_of_a_float32_matrix_keep_their_bound(seed):
    A = float32_matrix(seed)
    eigenvalues = np.linalg.eigvalsh(A.double().numpy())
    v0 = torch.randn(A.shape[0], generator=torch.Generator().manual_seed(seed + 10))
    for tol in TOLS:
        est = lanczos_top_eigenpair(lambda v: A @ v, v0, tol=tol, max_iter=300)
        check_promise(est.value, est.error_bound, est.converged, tol, eigenvalues)
        lean = lean_top_eigenpair(lambda v: A @ v, v0, tol=tol, max_iter=300)
        check_promise(lean.value, lean.error_bound, lean.converged, tol, eigenvalues)
        (batched,) = batched_lanczos(lambda active, V: V @ A, v0[None], tol=[tol], max_iter=[300])
        check_promise(batched.value, batched.error_bound, batched.converged, tol, eigenvalues)
    assert not est.converged and not lean.converged and not batched.converged   # tol 1e-9


@pytest.mark.parametrize("block_size", [1, 2])
def test_top_k_residuals_of_a_float32_matrix_are_not_below_rounding(block_size):
    # at tol 1e-8 the top pair's residual was divided by 1190 |theta| (an absolute test below
    # "100 eps"), reported 1e-14 with a relative residual of 1e-8, converged
    A = float32_matrix(0)
    eig = lanczos_top_k(lambda v: A @ v, torch.ones(A.shape[0]), 2, tol=1e-8, max_iter=300,
                        block_size=block_size)
    assert not eig.converged
    for value, vector, reported in zip(eig.values, eig.vectors.double(), eig.residuals):
        true = float(torch.linalg.vector_norm(A.double() @ vector - value * vector)) / abs(value)
        assert true <= reported, (true, reported)


def tanh_mlp(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    return model, torch.nn.MSELoss(), (torch.randn(64, 3), torch.randn(64, 2))


@pytest.mark.parametrize("memory", ["fast", "lean"])
def test_a_float32_sharpness_below_rounding_is_not_converged_and_keeps_its_bound(memory):
    # at tol 1e-7 the default solve reported 1.2e-8 for an error of 6.8e-8, converged
    for seed in range(3):
        model, loss_fn, batch = tanh_mlp(seed)
        eigenvalues = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())
        for tol in (1e-7, 1e-8):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # lean's "3x cannot be met" on a model this small
                est = catapult.sharpness(model, loss_fn, batch, tol=tol, memory=memory, max_iter=200)
            check_promise(est.value, est.error_bound, est.converged, tol, eigenvalues)
            assert not est.converged


def test_a_top_eigenvalue_of_zero_is_not_converged_by_any_solver():
    # a concave loss in a rank-1 direction: H = -2 x x^T / N, top eigenvalue exactly 0. Lanczos
    # said converged with a "relative" bound of 2.4e-7 around a value of -3.6e-13 (an absolute
    # error of 9e-20 claimed); lean and finite differences said not converged
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1, bias=False).to(dtype)
        batch = (torch.randn(2, 3, dtype=dtype), torch.zeros(2, 1, dtype=dtype))

        def concave(out, _):
            return -(out ** 2).mean()

        for kwargs in ({}, {"coarse": None}, {"memory": "lean"}, {"hvp": "finite_difference"}):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = catapult.sharpness(model, concave, batch, tol=1e-3, **kwargs)
            assert abs(est.value) < 1e-6, (dtype, kwargs, est)
            assert not est.converged and est.error_bound > 1e-3, (dtype, kwargs, est)


def test_lean_stops_at_the_rounding_floor_instead_of_spending_max_iter():
    # below what float32 can certify the computed residual stalls: lean ran cycles to max_iter
    # (300 products) for a bound that stayed at the floor; the fast solver stops on invariance
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    batch = (torch.randn(64, 3), torch.randn(64, 2))
    top = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1]
    est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-8, memory="lean", max_iter=300)
    assert not est.converged and est.matvecs < 60
    assert abs(est.value - top) / top <= est.error_bound < 2e-6


def test_a_basis_that_spans_the_space_is_converged_only_where_the_residuals_are_within_tol():
    # the basis spans R^5 after 5 products: exact to rounding, so converged at tol 1e-6 but not at
    # a tol under float32's rounding floor (documented: converged=False)
    from catapult.curvature.top_k import lanczos_top_k

    A = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]))
    low = lanczos_top_k(lambda v: A @ v, torch.ones(5), 2, tol=1e-12)
    assert low.values == pytest.approx([5.0, 4.0], rel=1e-6) and low.matvecs == 5
    assert not low.converged
    assert lanczos_top_k(lambda v: A @ v, torch.ones(5), 2, tol=1e-4).converged
