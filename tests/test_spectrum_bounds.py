"""The spectrum functions' documented argument bounds, each at its edge: the least value allowed
works (against a dense Hessian worked out by hand), the next one down is a ValueError naming the
argument. Written for mutations of these bounds that the rest of the suite let through."""
import pytest
import torch

import catapult
from catapult.curvature.spectrum import check_matvecs


def diagonal_problem():
    """A linear model under MSE over three samples ``diag(2, 1, 3)``: ``H = (2/3) X^T X =
    diag(8/3, 2/3, 6)`` in float64."""
    model = torch.nn.Linear(3, 1, bias=False).double()
    batch = (torch.diag(torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)), torch.zeros(3, 1, dtype=torch.float64))
    return model, torch.nn.MSELoss(), batch


def test_top_eigenpairs_takes_max_iter_equal_to_k_and_refuses_one_less():
    model, loss_fn, batch = diagonal_problem()
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=3, max_iter=3, tol=1e-10)
    assert eig.values == pytest.approx([6.0, 8 / 3, 2 / 3], rel=1e-10)
    with pytest.raises(ValueError, match="max_iter=2 is below k=3"):
        catapult.top_eigenpairs(model, loss_fn, batch, k=3, max_iter=2)


def test_hutch_plus_plus_needs_three_products():
    assert check_matvecs(3) == 3
    with pytest.raises(ValueError, match="^hessian_trace matvecs must be an integer >= 3; got 2$"):
        check_matvecs(2)
    model, loss_fn, batch = diagonal_problem()
    # 3 products on 3 dimensions: exact, tr H = 8/3 + 2/3 + 6
    assert catapult.hessian_trace(model, loss_fn, batch, matvecs=3) == pytest.approx(28 / 3, rel=1e-12)
    with pytest.raises(ValueError, match="matvecs"):
        catapult.hessian_trace(model, loss_fn, batch, matvecs=2)


@pytest.mark.parametrize("runs, steps", [(0, 2), (2, 0)])
def test_spectral_density_refuses_zero_runs_or_steps_naming_them(runs, steps):
    model, loss_fn, batch = diagonal_problem()
    with pytest.raises(ValueError, match=rf"^spectral_density {'runs' if runs == 0 else 'steps'} must be an integer in \[1, 100000\]; got 0$"):
        catapult.spectral_density(model, loss_fn, batch, runs=runs, steps=steps)


def test_spectral_density_takes_one_run_of_one_step():
    model, loss_fn, batch = diagonal_problem()
    dens = catapult.spectral_density(model, loss_fn, batch, runs=1, steps=1, seed=3)
    # one Lanczos step from v: the node is the Rayleigh quotient v^T H v / v^T v, of weight 1;
    # a Rademacher v has v_i^2 = 1, so the node is tr(H) / 3
    assert dens.nodes.shape == (1, 1) and dens.weights.tolist() == [[pytest.approx(1.0)]]
    assert float(dens.nodes[0, 0]) == pytest.approx(28 / 9, rel=1e-12)



def test_orthonormal_rows_of_split_vectors_keep_the_rank_not_rounding_directions():
    """Hutch++'s ``Q`` for vectors split over the ranks (the Gram-matrix path, ``reduce`` given):
    rows of rank 2 out of 3 give 2 orthonormal rows spanning them. A rounding-level eigenvalue of
    the Gram matrix (here positive in 3 of the 5 draws) kept as a direction added a row of noise."""
    from catapult.curvature.trace import _orthonormal_rows

    torch.manual_seed(0)
    for _ in range(5):
        a = torch.randn(2, 50, dtype=torch.float64)
        rows = torch.cat([a, 3 * a[:1] + 0.5 * a[1:]])
        q = _orthonormal_rows(rows, reduce=lambda t: t)
        assert q.shape == (2, 50)
        torch.testing.assert_close(q @ q.T, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)
        # the span: each row of `rows` is its own projection onto q's rows
        torch.testing.assert_close((rows @ q.T) @ q, rows, rtol=0, atol=1e-12)
